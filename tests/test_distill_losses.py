"""Distillation losses on hand-made tensors with known values, and on a tiny LM."""

from __future__ import annotations

import math

import pytest
import torch
from ceed_vla.distill import losses as L


def test_converged_prefix_and_mask():
    target = torch.tensor([[1, 2, 3, 4]] * 4)
    state = torch.tensor([[1, 2, 3, 4], [1, 2, 9, 4], [0, 2, 3, 4], [1, 9, 9, 9]])
    assert L.converged_prefix_len(state, target).tolist() == [4, 2, 0, 1]
    mask = L.consistency_mask(state, target)
    assert mask.tolist() == [
        [False, False, False, False],  # already the fixed point: nothing to learn
        [False, False, False, True],  # context of position 3 holds the wrong token 2
        [False, True, True, True],  # position 0 sees the prefix only
        [False, False, True, True],
    ]


def test_consistency_loss_known_value_and_masking():
    # Target p = (1/2, 1/2); student q = (1/4, 3/4): KL(p || q) = 0.5 * ln(4/3).
    target = torch.zeros(1, 3, 2)
    student = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0], [0.0, math.log(3.0)]]], requires_grad=True)
    mask = torch.tensor([[True, False, True]])
    loss = L.consistency_loss(student, target, mask)
    assert loss.item() == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-6)
    loss.backward()
    assert student.grad[0, 1].abs().sum() == 0  # masked position gets no gradient
    assert student.grad[0, 0].abs().sum() > 0


def test_consistency_loss_stops_gradient_into_target():
    target = torch.randn(2, 3, 5, requires_grad=True)
    student = torch.randn(2, 3, 5, requires_grad=True)
    L.consistency_loss(student, target, torch.ones(2, 3, dtype=torch.bool)).backward()
    assert target.grad is None
    assert student.grad is not None


def test_consistency_loss_empty_mask_is_zero_and_attached():
    student = torch.randn(2, 3, 5, requires_grad=True)
    loss = L.consistency_loss(student, torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad.abs().sum() == 0


def test_mix_labels_rule():
    teacher = torch.tensor([[1, 1], [2, 2], [3, 3]])
    gt = torch.tensor([[7, 7], [8, 8], [9, 9]])
    l1 = torch.tensor([0.05, 0.2, 0.1])
    labels, use_teacher = L.mix_labels(teacher, gt, l1, delta=0.1)
    assert labels.tolist() == [[1, 1], [8, 8], [3, 3]]  # within delta (inclusive) -> teacher
    assert use_teacher.tolist() == [True, False, True]
    assert L.mix_labels(teacher, gt, l1, 0.1, "gt")[0].tolist() == gt.tolist()
    assert L.mix_labels(teacher, gt, l1, 0.1, "teacher")[0].tolist() == teacher.tolist()
    assert L.mix_labels(teacher, gt, l1, 0.0)[1].tolist() == [False, False, False]
    with pytest.raises(ValueError, match="'both'"):
        L.mix_labels(teacher, gt, l1, 0.1, "both")


def test_ar_loss_known_value():
    logits = torch.zeros(2, 3, 4)  # uniform over 4 bins
    assert L.ar_loss(logits, torch.zeros(2, 3, dtype=torch.long)).item() == pytest.approx(math.log(4.0))
    confident = torch.full((1, 1, 4), -30.0)
    confident[0, 0, 2] = 30.0
    assert L.ar_loss(confident, torch.tensor([[2]])).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"w_ar": -1.0}, "w_ar"),
        ({"delta": -0.1}, "delta"),
        ({"labels": "x"}, "'x'"),
        ({"consistency": "y"}, "'y'"),
        ({"target": "ema"}, "'ema'"),
        ({"target": "teacher", "consistency": "local"}, "global"),
    ],
)
def test_loss_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.DistillLossConfig(**kwargs)


def _obs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"observation.state": torch.randn(b, 4, generator=g)}


def _distill_batch(p, state, target, teacher, gt, l1):
    return {**_obs(state.shape[0]), L.STATE: state, L.TARGET: target, L.TEACHER: teacher, L.GT: gt, L.L1: l1}


def test_distill_loss_parts(tiny_block_policy):
    torch.manual_seed(0)
    p = tiny_block_policy
    n = p.chunk_tokens
    target = torch.randint(0, p.n_bins, (2, n))
    gt = torch.randint(0, p.n_bins, (2, n))
    l1 = torch.tensor([0.05, 0.5])
    # State equal to the fixed point: the consistency term is exactly zero.
    batch = _distill_batch(p, target.clone(), target, target, gt, l1)
    loss, info = L.DistillLoss(L.DistillLossConfig(w_ar=2.0, delta=0.1))(p, batch)
    assert info["loss_consistency"] == 0.0
    assert info["teacher_label_share"] == 0.5
    labels = torch.stack([target[0], gt[1]])
    with torch.no_grad():
        prefix, mask = p.prefix_embeddings(batch)
        ce = L.ar_loss(p.action_logits(prefix, mask, labels), labels)
    assert loss.item() == pytest.approx(2.0 * ce.item(), rel=1e-5)
    # A state off the fixed point gives a positive consistency loss whose gradient reaches the LM.
    state = target.clone()
    state[:, 1:] = (state[:, 1:] + 7) % p.n_bins
    batch = _distill_batch(p, state, target, target, gt, l1)
    loss, info = L.DistillLoss(L.DistillLossConfig(w_ar=0.0, consistency="global"))(p, batch)
    assert info["loss_consistency"] > 0
    assert info["consistency_positions"] == pytest.approx((n - 2) / n)
    loss.backward()
    assert p.lm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    # Consistency off: only the AR term remains.
    _, info = L.DistillLoss(L.DistillLossConfig(w_ar=1.0, consistency="none"))(p, batch)
    assert "loss_consistency" not in info
    assert info["loss"] == pytest.approx(info["loss_ar"])


def test_teacher_target_counts_every_position_and_trains_only_the_student(tiny_block_policy):
    import copy

    torch.manual_seed(0)
    student = tiny_block_policy
    teacher = copy.deepcopy(student)
    n = student.chunk_tokens
    fixed = torch.randint(0, student.n_bins, (2, n))
    gt = torch.randint(0, student.n_bins, (2, n))
    l1 = torch.tensor([0.0, 0.0])
    cfg = L.DistillLossConfig(w_ar=0.0, target="teacher")
    with pytest.raises(ValueError, match="teacher model"):
        L.DistillLoss(cfg)
    loss_fn = L.DistillLoss(cfg, teacher=teacher)
    # The same weights on the fixed point: nothing to learn, but every position is counted.
    _, info = loss_fn(student, _distill_batch(student, fixed.clone(), fixed, fixed, gt, l1))
    assert info["loss_consistency"] == pytest.approx(0.0, abs=1e-6)
    assert info["consistency_positions"] == 1.0
    # Once the student has moved, the converged prefix carries a signal too (self-targets mask it).
    with torch.no_grad():
        for w in student.lm.parameters():
            w.add_(0.05 * torch.randn_like(w))
    batch = _distill_batch(student, fixed.clone(), fixed, fixed, gt, l1)
    loss, info = loss_fn(student, batch)
    assert info["loss_consistency"] > 1e-4
    assert L.DistillLoss(L.DistillLossConfig(w_ar=0.0))(student, batch)[1]["loss_consistency"] == 0.0
    loss.backward()
    assert student.lm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # The target is the teacher's distribution on the fixed point, whatever state the student sees.
    with torch.no_grad():
        prefix, mask = teacher.prefix_embeddings(batch)
        expected = teacher.action_logits(prefix, mask, fixed)
        s_prefix, s_mask = student.prefix_embeddings(batch)
        state = (fixed + 3) % student.n_bins
        state[:, 0] = fixed[:, 0]
        kl = L.consistency_loss(
            student.action_logits(s_prefix, s_mask, state), expected, torch.ones_like(state, dtype=torch.bool)
        )
        _, info = loss_fn(student, _distill_batch(student, state, fixed, fixed, gt, l1))
    assert info["loss_consistency"] == pytest.approx(kl.item(), rel=1e-5)
