"""Consistency-distillation losses: L = L_consistency + w * L_AR.

Notation: a block of n action tokens follows a prefix of P embeddings. The prediction for block
position i sees the prefix and tokens [0, i) of the block; position 0 sees the prefix only. Logits
are taken over the n_bins action rows only, as in greedy decoding.

- Global consistency: the student on a random intermediate Jacobi state y_j against the
  stop-gradient student on the fixed point y*, per position (KL(p* || p_j)).
- Local consistency: the same against the next state y_{j+1} instead of y*.
- Positions whose whole context already equals the target's (the converged prefix, and the first
  position after it) see identical inputs in both forwards and are masked.
- Target model (`target`): "self" (the paper's: the stop-gradient student) or "teacher" (the frozen
  teacher on the fixed point, i.e. its own AR distribution at every position). With the teacher as
  target every position counts, the converged prefix included: there the term is plain knowledge
  distillation along the teacher's path, which keeps the student's own greedy policy the teacher's.
- L_AR: teacher-forced next-token cross-entropy on mixed labels: the teacher's tokens for samples
  where the teacher's action is within delta (mean L1 as a fraction of each dimension's q01..q99 range) of the ground truth, else the
  ground-truth tokens.
- Forced prefix (`distill.forced` = f > 0, a sample collected with the chunk's first f tokens given):
  both losses cover the free positions i >= f only, and the AR loss's inputs keep the forced tokens
  (the ones the teacher's fixed point was decoded after), whichever labels the sample takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

LABEL_MODES = ("mixed", "teacher", "gt")
CONSISTENCY_MODES = ("global", "local", "none")
TARGET_MODELS = ("self", "teacher")

# Batch keys the distillation dataset adds next to the observation keys.
STATE = "distill.state"  # [B, n] long: intermediate Jacobi state (or its noised variant)
TARGET = "distill.target"  # [B, n] long: fixed point (global) or next state (local)
TEACHER = "distill.teacher_tokens"  # [B, n] long
GT = "distill.gt_tokens"  # [B, n] long
L1 = "distill.l1"  # [B] float: mean |teacher action - ground-truth action|
FORCED = "distill.forced"  # [B] long: leading tokens given as a forced prefix (0 = none)


def converged_prefix_len(state: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Length of the leading run where `state` equals `target`. state, target: [B, n] -> [B] long."""
    equal = (state == target).long()  # [B, n]
    return equal.cumprod(dim=1).sum(dim=1)


def consistency_mask(state: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, n] bool: True where the student's context on `state` differs from that on `target`.

    Position i's context is the prefix plus tokens [0, i); it matches the target's when i <= c, c the
    converged prefix length, so only positions i > c carry a consistency signal.
    """
    c = converged_prefix_len(state, target)  # [B]
    positions = torch.arange(state.shape[1], device=state.device)  # [n]
    return positions[None, :] > c[:, None]


def consistency_loss(
    student_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over masked positions of KL(softmax(target) || softmax(student)).

    student_logits, target_logits: [B, n, V]; mask: [B, n] bool. `target_logits` is detached here.
    Returns 0 (still attached to the student's graph) when no position is masked in.
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)  # [B, n, V]
    log_p = F.log_softmax(target_logits.detach().float(), dim=-1)  # [B, n, V]
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # [B, n]
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


def mix_labels(
    teacher_tokens: torch.Tensor, gt_tokens: torch.Tensor, l1: torch.Tensor, delta: float, mode: str = "mixed"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample label choice. tokens: [B, n]; l1: [B]. Returns (labels [B, n], use_teacher [B] bool).

    "mixed": the teacher's tokens where l1 <= delta, else the ground truth; "teacher" / "gt": always.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    if mode == "teacher":
        use_teacher = torch.ones_like(l1, dtype=torch.bool)
    elif mode == "gt":
        use_teacher = torch.zeros_like(l1, dtype=torch.bool)
    else:
        use_teacher = l1 <= delta
    labels = torch.where(use_teacher[:, None], teacher_tokens, gt_tokens)
    return labels, use_teacher


def ar_loss(logits: torch.Tensor, labels: torch.Tensor, free: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced next-token CE. logits: [B, n, V] (position i predicts label i); labels: [B, n];
    free: [B, n] bool, the positions that count (None: all), averaged over."""
    if free is None:
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")  # [B*n]
    m = free.flatten().to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp_min(1.0)


def free_positions(forced: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """[B, n] bool, True at positions i >= forced[b]; None when no sample has a forced prefix."""
    if forced is None or not bool((forced > 0).any()):
        return None
    return torch.arange(n, device=forced.device)[None, :] >= forced[:, None]


@dataclass
class DistillLossConfig:
    """L = L_consistency + w_ar * L_AR.

    w_ar: weight of the AR cross-entropy (the consistency term has weight 1). 0.1 lets consistency
        lead: on the full demo profile it cut exact Jacobi iterations 2.6x and kept closed-loop
        success, where 10 (the weight first tried) cut them 1.2x (docs/experiments/2026-12-distill-levers.md).
    delta: the teacher's chunk is trusted as label when its mean L1 to the ground truth, as a fraction
        of each dimension's q01..q99 range (one of 256 bins is 0.0039), is at most delta; 0.05 is about
        the former 0.1 action units on MetaWorld's [-1, 1] actions, and means the same on any arm.
    labels: "mixed" (the rule above), "teacher" or "gt" (ablations).
    consistency: "global" (against the fixed point), "local" (against the next Jacobi state; the
        dataset must then give next states as targets) or "none" (ablation: AR loss only).
    target: whose distribution on the target state the student is pulled to: "self" (the stop-gradient
        student, as in CLLM and CEED-VLA) or "teacher" (the frozen model the student started from;
        global consistency only). Self-targets move with the student, and with them its fixed point
        and its greedy policy; the teacher's stay where the teacher's success is.
    """

    w_ar: float = 0.1
    delta: float = 0.05
    labels: str = "mixed"
    consistency: str = "global"
    target: str = "self"

    def __post_init__(self) -> None:
        if self.w_ar < 0:
            raise ValueError(f"w_ar must be >= 0, got {self.w_ar}")
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0 (a fraction of the q01..q99 range), got {self.delta}")
        if self.labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {self.labels!r}")
        if self.consistency not in CONSISTENCY_MODES:
            raise ValueError(f"consistency must be one of {CONSISTENCY_MODES}, got {self.consistency!r}")
        if self.consistency == "none" and self.w_ar == 0:
            raise ValueError("consistency='none' with w_ar=0 leaves no loss; set w_ar > 0")
        if self.target not in TARGET_MODELS:
            raise ValueError(f"target must be one of {TARGET_MODELS}, got {self.target!r}")
        if self.target == "teacher" and self.consistency != "global":
            raise ValueError(
                f"target='teacher' is the teacher's distribution on the fixed point, which needs "
                f"consistency='global', got {self.consistency!r}"
            )


class DistillLoss:
    """Pluggable loss for the shared trainer: `loss_fn(policy, batch) -> (loss, info)`.

    The policy provides `prefix_embeddings(batch) -> (embeds [B, P, H], mask [B, P])` and
    `action_logits(embeds, mask, bins [B, n]) -> [B, n, n_bins]` (teacher-forced, row i predicts
    bin i); the batch carries the observation keys plus the `distill.*` keys of `DistillDataset`.
    `teacher` (the same interface, frozen here) is needed for `target="teacher"`.
    """

    def __init__(self, config: DistillLossConfig | None = None, teacher=None):
        self.config = config or DistillLossConfig()
        if self.config.target == "teacher":
            if teacher is None:
                raise ValueError("target='teacher' needs the teacher model: DistillLoss(config, teacher=...)")
            teacher.eval().requires_grad_(False)
        self.teacher = teacher if self.config.target == "teacher" else None

    def _target_logits(self, batch: dict[str, Any], logits, state: torch.Tensor, target: torch.Tensor):
        """(target logits [B, n, n_bins], mask [B, n] of the positions that count), without gradient."""
        if self.teacher is None:
            return logits(target), consistency_mask(state, target)
        if next(self.teacher.parameters()).device != state.device:  # follow the student's device
            self.teacher.to(state.device)
        prefix, mask = self.teacher.prefix_embeddings(batch)  # [B, P, H], [B, P]
        return self.teacher.action_logits(prefix, mask, target.long()), torch.ones_like(
            state, dtype=torch.bool
        )

    def __call__(self, policy, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        prefix, mask = policy.prefix_embeddings(batch)  # [B, P, H], [B, P]

        def logits(bins: torch.Tensor) -> torch.Tensor:  # [B, n] -> [B, n, n_bins]
            return policy.action_logits(prefix, mask, bins.long())

        labels, use_teacher = mix_labels(batch[TEACHER], batch[GT], batch[L1], cfg.delta, cfg.labels)
        info: dict[str, float] = {"teacher_label_share": use_teacher.float().mean().item()}
        free = free_positions(batch.get(FORCED), labels.shape[1])  # [B, n] | None
        inputs = labels if free is None else torch.where(free, labels, batch[TARGET])  # forced tokens kept
        loss_ar = ar_loss(logits(inputs), labels, free) if cfg.w_ar > 0 else prefix.new_zeros(())
        loss = cfg.w_ar * loss_ar
        info["loss_ar"] = loss_ar.item()
        if cfg.consistency != "none":
            state, target = batch[STATE], batch[TARGET]
            with torch.no_grad():
                target_logits, cmask = self._target_logits(batch, logits, state, target)  # [B, n, V], [B, n]
                if free is not None:
                    cmask = cmask & free
            loss_c = consistency_loss(logits(state), target_logits, cmask)
            loss = loss + loss_c
            info["loss_consistency"] = loss_c.item()
            info["consistency_positions"] = cmask.float().mean().item()
        info["loss"] = loss.item()
        return loss, info
