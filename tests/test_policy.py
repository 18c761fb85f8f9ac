"""The VLA policy: tokenizers, prompt layout, loss, decoding hook, chunk queue, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from ceed_vla.policy import (
    ActionDimMismatchError,
    ActionTokenizer,
    CheckpointError,
    ConfigError,
    LMConfig,
    VisionConfig,
    VLAConfig,
    VLAPolicy,
    make_config,
)

from tests.fixtures.policy import TASKS, random_batch

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("build", "quoted"),
    [
        (lambda: VLAConfig(chunk_size=0), "0"),
        (lambda: VLAConfig(n_bins=1), "1"),
        (lambda: VLAConfig(chunk_size=4, n_action_steps=5), "5"),
        (lambda: LMConfig(hidden_size=100, num_heads=3), "100"),
        (lambda: VisionConfig(kind="vit"), "'vit'"),
        (lambda: make_config("huge"), "'huge'"),
    ],
)
def test_config_refuses_bad_values_and_quotes_them(build, quoted):
    with pytest.raises(ConfigError, match=quoted):
        build()


def test_config_round_trips_through_dict_and_derives_chunk_tokens():
    cfg = make_config("small", chunk_size=5, action_dim=3)
    assert cfg.chunk_tokens == 15
    again = VLAConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    with pytest.raises(ConfigError, match="bogus"):
        VLAConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# -------------------------------------------------------------------------------- action tokenizer


def test_action_round_trip_is_within_half_a_bin():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(5000, 4, generator=g) * torch.tensor([0.1, 1.0, 3.0, 0.01])
    tok = ActionTokenizer.fit(data, n_bins=256)
    inside = torch.minimum(torch.maximum(data, tok.q01), tok.q99)
    bins = tok.encode(inside)
    assert bins.dtype == torch.long and int(bins.min()) >= 0 and int(bins.max()) <= 255
    err = (tok.decode(bins) - inside).abs()
    assert bool((err <= tok.bin_width / 2 + 1e-6).all()), (
        f"max error {err.max(0).values} > half bin {tok.bin_width / 2}"
    )


def test_action_tokenizer_clips_outliers_and_checks_dims():
    tok = ActionTokenizer(q01=torch.tensor([-1.0, 0.0]), q99=torch.tensor([1.0, 2.0]), n_bins=8)
    assert tok.encode(torch.tensor([[-5.0, 9.0]])).tolist() == [[0, 7]]
    assert torch.allclose(tok.decode(torch.tensor([[0, 7]])), torch.tensor([[-0.875, 1.875]]))
    with pytest.raises(ValueError, match="3 does not match"):
        tok.encode(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        tok.decode(torch.tensor([[0, 8]]))
    assert ActionTokenizer.from_dict(tok.to_dict()).to_dict() == tok.to_dict()


# --------------------------------------------------------------------------------------- the model


def test_prefix_is_left_padded_and_ordered_image_text_proprio(make_policy):
    policy = make_policy()
    batch = random_batch(batch=3)
    embeds, mask = policy.prefix_embeddings(batch)  # [B, P, H], [B, P]
    n_text = [len(policy._text_ids(t)) for t in batch["task"]]
    n_img = policy.config.vision.num_patches
    assert embeds.shape == (3, n_img + max(n_text) + 1, 64)
    assert mask.sum(1).tolist() == [n_img + t + 1 for t in n_text]
    for row in mask:  # every row: padding first, then only real tokens
        first = int(row.nonzero()[0])
        assert not row[:first].any() and row[first:].all()
    # The proprio embedding is the last position of every row.
    prop = policy.proprio(policy.state_normalizer(batch["observation.state"]))
    assert torch.allclose(embeds[:, -1], prop, atol=1e-6)


def test_forward_is_cross_entropy_over_action_rows_and_trains(make_policy):
    policy = make_policy().train()
    batch = random_batch(batch=2)
    loss, info = policy(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(info) >= {"loss", "token_acc", "action_l1"}
    # An untrained model is near uniform over the 256 action rows.
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 1.0
    loss.backward()
    assert policy.vision.net[0].weight.grad is not None and policy.proprio[0].weight.grad is not None
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        policy(batch)[0].backward()
        opt.step()
    assert policy(batch)[0].item() < 0.5 * loss.item()


def test_padded_chunk_steps_do_not_count(make_policy):
    policy = make_policy()
    batch = random_batch(batch=2)
    batch["action_is_pad"][:, 2:] = True
    loss_a, _ = policy(batch)
    batch["action"][:, 2:] = -batch["action"][:, 2:]  # change only padded targets
    loss_b, _ = policy(batch)
    assert torch.allclose(loss_a, loss_b)


def test_predict_action_chunk_decodes_the_argmax_of_the_training_forward(make_policy):
    from ceed_vla.decoding import DecodeConfig, DecodeStats

    policy = make_policy(seed=3)
    batch = random_batch(batch=3)
    actions = policy.predict_action_chunk(batch)  # [B, K, D]
    assert actions.shape == (3, 4, 4)
    assert isinstance(policy.last_decode_stats, DecodeStats)
    bins = policy.last_decode_output.bins  # [B, n]
    # Teacher forcing the decoded tokens, the argmax of every row reproduces them: the training
    # forward and the decoder agree on the prompt layout, positions and action rows.
    with torch.no_grad():
        prefix, mask = policy.prefix_embeddings(batch)
        logits = policy.action_logits(prefix, mask, bins)
    assert torch.equal(logits.argmax(-1), bins)
    assert torch.allclose(actions, policy.tokens_to_actions(bins))
    jacobi = policy.predict_action_chunk(batch, decoding=DecodeConfig(mode="jacobi"))
    assert torch.equal(jacobi, actions)
    with pytest.raises(ConfigError, match="n_bins"):
        policy.predict_action_chunk(batch, decoding=DecodeConfig(n_bins=128))
    # exact_steps: an early exit whose first steps are AR's (capped at the chunk), bad values refused
    sigma1 = DecodeConfig(mode="early_exit", sigma=1, init="random")
    for steps in (1, 2, 9):
        out = policy.predict_action_chunk(batch, decoding=sigma1, exact_steps=steps)
        assert torch.equal(out[:, : min(steps, 4)], actions[:, : min(steps, 4)]), steps
    with pytest.raises(ConfigError, match="exact_steps"):
        policy.predict_action_chunk(batch, decoding=sigma1, exact_steps=-1)


def test_select_action_pops_a_chunk_queue(make_policy, monkeypatch):
    policy = make_policy(n_action_steps=3)
    calls = []
    real = policy.predict_action_chunk

    def counting(obs, decoding=None, init_guess=None):
        calls.append(1)
        return real(obs, decoding=decoding, init_guess=init_guess)

    monkeypatch.setattr(policy, "predict_action_chunk", counting)
    obs = random_batch(batch=2)
    chunk = real(obs)
    got = [policy.select_action(obs) for _ in range(6)]
    assert len(calls) == 2  # 3 steps executed per chunk
    assert all(a.shape == (2, 4) for a in got)
    assert torch.equal(torch.stack(got[:3], 1), chunk[:, :3])
    policy.reset()
    policy.select_action(obs)
    assert len(calls) == 3


def test_wrong_state_or_action_dim_is_refused_with_both_numbers(make_policy):
    policy = make_policy()
    with pytest.raises(ActionDimMismatchError, match=r"4.*7"):
        policy.check_action_dim(7)
    batch = random_batch()
    batch["observation.state"] = torch.zeros(3, 6)
    with pytest.raises(ActionDimMismatchError, match=r"6.*4"):
        policy.prefix_embeddings(batch)


# ------------------------------------------------------------------------------------- checkpoints


def test_save_load_gives_identical_logits_and_actions(make_policy, tmp_path):
    policy = make_policy(seed=1)
    batch = random_batch()
    policy.save_pretrained(tmp_path / "ckpt")
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "policy_preprocessor.json",
        "policy_postprocessor.json",
        "ceed_model.json",
        "tokenizer.json",
    } <= names
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["type"] == "ceed"
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    bins = torch.randint(0, 256, (3, policy.chunk_tokens))
    with torch.no_grad():
        a = policy.action_logits(*policy.prefix_embeddings(batch), bins)
        b = loaded.action_logits(*loaded.prefix_embeddings(batch), bins)
    assert torch.equal(a, b)
    assert torch.equal(policy.predict_action_chunk(batch), loaded.predict_action_chunk(batch))
    assert loaded.config == policy.config  # the config survives the LeRobot layout unchanged
    assert loaded.action_token_start == policy.action_token_start
    assert loaded.action_tokenizer.to_dict() == policy.action_tokenizer.to_dict()


@pytest.mark.parametrize(
    "name",
    ["config.json", "model.safetensors", "policy_preprocessor.json", "ceed_model.json", "tokenizer.json"],
)
def test_missing_checkpoint_file_is_named(make_policy, tmp_path, name):
    make_policy().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        VLAPolicy.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize(
    "name", ["config.json", "model.safetensors", "policy_preprocessor.json", "ceed_model.json"]
)
def test_corrupt_checkpoint_file_is_named(make_policy, tmp_path, name):
    make_policy().save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        VLAPolicy.from_pretrained(tmp_path / "ckpt")


def _write_first_layout(policy, directory):
    """A checkpoint as the first ceed layout wrote it: config.json without `type`, normalizer.json."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True)
    meta = {
        "format_version": 1,
        "policy": {k: v for k, v in policy.config.to_dict().items() if k in LEGACY_FIELDS},
        "backbone": policy.lm.config.to_dict(),
        "vision_tower": None,
        "action_token_start": policy.action_token_start,
    }
    (directory / "config.json").write_text(json.dumps(meta, default=str))
    norm = {"action": policy.action_tokenizer.to_dict(), "state": policy.state_normalizer.to_dict()}
    (directory / "normalizer.json").write_text(json.dumps(norm))
    policy.tokenizer.save_pretrained(str(directory))
    save_model(policy, str(directory / "model.safetensors"))


LEGACY_FIELDS = (
    "chunk_size n_action_steps action_dim state_dim n_bins max_text_tokens text_vocab_size lm vision "
    "lm_path dropout"
).split()


def test_first_layout_checkpoint_loads_and_converts(make_policy, tmp_path):
    from ceed_vla.cli import main as ceed

    policy = make_policy(seed=2)
    _write_first_layout(policy, tmp_path / "old")
    batch = random_batch()
    old = VLAPolicy.from_pretrained(tmp_path / "old")
    assert torch.equal(old.predict_action_chunk(batch), policy.predict_action_chunk(batch))
    with pytest.raises(CheckpointError, match=r"ceed checkpoint convert"):
        VLAPolicy.from_pretrained(tmp_path / "old", normalize_inside=False)
    assert ceed(["checkpoint", "convert", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    assert json.loads((tmp_path / "new" / "config.json").read_text())["type"] == "ceed"
    new = VLAPolicy.from_pretrained(tmp_path / "new")
    assert torch.equal(new.predict_action_chunk(batch), policy.predict_action_chunk(batch))


def test_checkpoint_with_other_action_dim_is_refused(make_policy, tmp_path):
    make_policy().save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ActionDimMismatchError, match=r"4-dim.*expects 6"):
        VLAPolicy.from_pretrained(tmp_path / "ckpt", expected_action_dim=6)


# ------------------------------------------------------------------------------ pretrained backbone


def _save_backbone(directory, seed=0):
    """A tiny pretrained Llama + its own tokenizer, written to disk as a user's local model would be."""
    from ceed_vla.policy.text_tokenizer import train_instruction_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_instruction_tokenizer(list(TASKS) * 3, vocab_size=60)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer) + 5,  # checkpoints often carry spare rows beyond the tokenizer
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    lm = LlamaForCausalLM(cfg)
    lm.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return lm, tokenizer


def _save_vision_tower(directory):
    from transformers import ViTConfig, ViTModel

    tower = ViTModel(
        ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        add_pooling_layer=False,
    )
    tower.save_pretrained(directory)
    return tower


def test_pretrained_backbone_and_tower_from_local_directories(tmp_path):
    from ceed_vla.policy import StateNormalizer
    from ceed_vla.policy.text_tokenizer import load_tokenizer

    lm, tokenizer = _save_backbone(tmp_path / "lm")
    tower = _save_vision_tower(tmp_path / "vit")
    config = make_config(
        "pretrained", lm_path=str(tmp_path / "lm"), tower_path=str(tmp_path / "vit"), chunk_size=2
    )
    action_tok = ActionTokenizer.fit(torch.rand(50, 4) * 2 - 1)
    policy = VLAPolicy.build(
        config, load_tokenizer(config.lm_path), action_tok, StateNormalizer.fit(torch.rand(50, 4))
    )
    vocab = lm.config.vocab_size
    assert policy.action_token_start == vocab
    emb = policy.lm.get_input_embeddings().weight
    assert emb.shape[0] == vocab + 256
    assert torch.equal(emb[:vocab], lm.get_input_embeddings().weight)  # pretrained rows kept
    assert torch.equal(
        policy.vision.model.embeddings.patch_embeddings.projection.weight,
        tower.embeddings.patch_embeddings.projection.weight,
    )
    assert policy.tokenizer.get_vocab() == tokenizer.get_vocab()
    batch = random_batch(batch=2, chunk=2)
    loss, _ = policy(batch)
    assert torch.isfinite(loss)
    # The checkpoint stands alone: it loads after the pretrained directories are gone.
    policy.eval().save_pretrained(tmp_path / "ckpt")
    for d in ("lm", "vit"):
        for f in (tmp_path / d).iterdir():
            f.unlink()
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.predict_action_chunk(batch), policy.predict_action_chunk(batch))


def test_pretrained_path_must_be_a_local_directory(tmp_path):
    from ceed_vla.policy import StateNormalizer

    config = make_config("pretrained", lm_path=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="nope"):
        VLAPolicy.build(
            config, None, ActionTokenizer.fit(torch.rand(9, 4)), StateNormalizer.fit(torch.rand(9, 4))
        )


def test_first_step_weight_scales_only_the_first_steps_tokens(make_policy):
    policy = make_policy()
    batch = random_batch(batch=2)
    with torch.no_grad():
        prefix, mask = policy.prefix_embeddings(batch)
        bins = policy.actions_to_bins(batch["action"])
        ce = torch.nn.functional.cross_entropy(
            policy.action_logits(prefix, mask, bins).transpose(1, 2), bins, reduction="none"
        )  # [B, n]
        weights = torch.ones(policy.chunk_tokens)
        weights[: policy.config.action_dim] = 5.0
        expected = ((ce * weights).sum(1) / weights.sum()).mean()
        loss, info = policy(batch, first_step_weight=5.0)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert 0.0 <= info["first_step_acc"] <= 1.0 and info["first_step_l1"] >= 0.0


def test_aux_final_state_loss_adds_to_the_loss_and_trains_the_encoder(make_policy):
    from ceed_vla.policy.modeling import FINAL_STATE_KEY

    batch = random_batch(batch=4, chunk=4)
    plain = make_policy(seed=0)
    with_aux = make_policy(seed=0, aux_final_state_weight=2.0)
    batch[FINAL_STATE_KEY] = torch.randn(4, 4)
    loss0, info0 = plain(batch)
    loss1, info1 = with_aux(batch)
    assert "aux_final_state_mse" not in info0 and info1["aux_final_state_mse"] > 0
    # same initial weights for everything the two share: the difference is exactly w * mse
    assert loss1.item() == pytest.approx(loss0.item() + 2.0 * info1["aux_final_state_mse"], rel=1e-5)
    with_aux.zero_grad()
    with_aux.aux_head(with_aux._vision_tokens.flatten(1)).square().mean().backward()
    assert with_aux.vision.net[0].weight.grad.abs().sum() > 0  # the signal reaches the encoder
    del batch[FINAL_STATE_KEY]
    with pytest.raises(KeyError, match="episode.final_state"):
        with_aux(batch)


def test_chunk_samples_carry_their_episode_final_state(policy_dataset):
    from ceed_vla.policy.data import DataConfig, build_datasets
    from ceed_vla.policy.modeling import FINAL_STATE_KEY

    repo_id, root = policy_dataset
    frames, train, _ = build_datasets(DataConfig(roots=[str(root)], repo_ids=[repo_id], chunk_size=4))
    for i in (0, 5, len(train) - 1):
        row = int(train.rows[i])
        end = int(frames.ep_end[row])
        assert torch.equal(train[i][FINAL_STATE_KEY], frames.states[end - 1])


def _save_dual_encoder(directory, kind: str):
    """A full image-text model folder (the form CLIP and SigLIP are published in), with its processor."""
    import json

    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel

        config = CLIPConfig(
            text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
            vision_config=dict(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                image_size=16, patch_size=8,
            ),
            projection_dim=8,
        )  # fmt: skip
        model, mean, std = CLIPModel(config), [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]
    else:
        from transformers import SiglipConfig, SiglipModel

        config = SiglipConfig(
            text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
            vision_config=dict(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                image_size=16, patch_size=8,
            ),
        )  # fmt: skip
        model, mean, std = SiglipModel(config), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    return model, mean, std


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_full_clip_or_siglip_folder_serves_its_vision_model_with_its_own_normalisation(tmp_path, kind):
    from ceed_vla.policy import StateNormalizer
    from ceed_vla.policy.text_tokenizer import load_tokenizer

    _save_backbone(tmp_path / "lm")
    full, mean, std = _save_dual_encoder(tmp_path / kind, kind)
    config = make_config(
        "pretrained", lm_path=str(tmp_path / "lm"), tower_path=str(tmp_path / kind), chunk_size=2
    )
    policy = VLAPolicy.build(
        config, load_tokenizer(config.lm_path), ActionTokenizer.fit(torch.rand(50, 4) * 2 - 1),
        StateNormalizer.fit(torch.rand(50, 4)),
    )  # fmt: skip
    tower = policy.vision.model
    assert type(tower).__name__ == {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}[kind]
    ours, theirs = tower.state_dict(), full.vision_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert policy.config.vision.image_mean == pytest.approx(tuple(mean))
    assert policy.config.vision.image_std == pytest.approx(tuple(std))
    images = torch.rand(2, 3, 16, 16)
    expected = full.vision_model(pixel_values=(images - torch.tensor(mean).view(1, 3, 1, 1))
                                 / torch.tensor(std).view(1, 3, 1, 1)).last_hidden_state  # fmt: skip
    assert torch.allclose(policy.vision(images), expected, atol=1e-5)
    # the checkpoint restores the vision model and its normalisation without the folder
    batch = random_batch(batch=2, chunk=2)
    policy.eval().save_pretrained(tmp_path / "ckpt")
    for f in (tmp_path / kind).iterdir():
        f.unlink()
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.vision.image_mean == pytest.approx(tuple(mean))
    assert torch.equal(loaded.predict_action_chunk(batch), policy.predict_action_chunk(batch))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "pretrained"], "--preset pretrained needs --lm-path"),
        (["--preset", "pretrained", "--lm-path", "/nonexistent/lm"], "is not a local model directory"),
        (["--vision-tower-path", "/nonexistent/vit"], "is not a local model directory"),
    ],
)
def test_model_argument_errors_come_before_any_data_loads(tmp_path, argv, message, monkeypatch):
    import argparse

    from ceed_vla.policy import train as train_job

    monkeypatch.setattr(train_job, "build_datasets", lambda *a, **k: pytest.fail("data loaded first"))
    parser = argparse.ArgumentParser()
    train_job.configure_parser(parser)
    args = parser.parse_args(["--dataset-root", str(tmp_path), "--output", str(tmp_path / "run"), *argv])
    with pytest.raises(SystemExit, match=message):
        train_job.main(args)


def test_cameras_are_encoded_in_one_pass_exactly_as_one_by_one(make_policy):
    keys = ("observation.images.front", "observation.images.wrist")
    policy = make_policy(image_keys=keys)
    batch = random_batch(batch=2)
    g = torch.Generator().manual_seed(5)
    for key in keys:
        batch[key] = torch.rand(2, 3, 24, 24, generator=g)
    embeds, mask = policy.prefix_embeddings(batch)
    t = policy.config.vision.num_patches
    for b in range(2):
        first = int(mask[b].nonzero()[0])  # rows are left-padded: the image tokens come first after it
        for c, key in enumerate(keys):  # camera c's tokens: its own encoding, plus its camera embedding
            alone = policy.projector(policy.vision(batch[key][b : b + 1]))[0] + policy.camera_embed[c]
            got = embeds[b, first + c * t : first + (c + 1) * t]
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
    first = int(mask[0].nonzero()[0])
    assert not torch.allclose(embeds[0, first : first + t], embeds[0, first + t : first + 2 * t])
