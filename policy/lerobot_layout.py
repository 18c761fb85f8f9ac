"""The checkpoint layout, which is LeRobot's: what `ceed` jobs and LeRobot's tools both read and write.

    config.json                 the policy config with LeRobot's `type: "ceed"`, `input_features` and
                                `output_features` (cameras, state, action with their shapes) and the
                                VLA's own fields (`VLAConfig`), which also carry the feature names and fps
    model.safetensors           the network's weights
    policy_preprocessor*.json   LeRobot's processor pipelines; their normaliser steps hold the statistics
    policy_postprocessor*       (state mean/std, action q01/q99) in `*.safetensors` state files
    ceed_model.json             what rebuilds the network shell: the backbone's config, the vision tower's
                                config and the first action-token id
    tokenizer.json (+ config)   the instruction tokenizer

The statistics live only in the processor files. A policy loaded by `ceed` (raw units in and out)
builds its action tokenizer and state normaliser from them; a policy loaded through LeRobot keeps
identity normalisers inside, because LeRobot's processors normalise its inputs and unnormalise its
outputs with the very same numbers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ceed_vla.keys import ACTION_KEY, STATE_KEY

from .action_tokenizer import ActionTokenizer, StateNormalizer
from .checkpoint_io import CheckpointError
from .config import VLAConfig

POLICY_TYPE = "ceed"
MODEL_FILE = "ceed_model.json"
FORMAT_VERSION = 2
# How LeRobot's processors normalise each kind of feature for this policy. Images stay in [0, 1]
# (the encoders rescale themselves); the action quantiles are the ones the bins are cut from.
NORMALIZATION_MAPPING = {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "QUANTILES"}


def feature_dicts(config: VLAConfig) -> tuple[dict[str, dict], dict[str, dict]]:
    """(input_features, output_features) in config.json's JSON form."""
    shapes = config.image_shapes or tuple((3, 0, 0) for _ in config.image_keys)
    inputs = {k: {"type": "VISUAL", "shape": list(s)} for k, s in zip(config.image_keys, shapes, strict=True)}
    inputs[STATE_KEY] = {"type": "STATE", "shape": [config.state_dim]}
    return inputs, {ACTION_KEY: {"type": "ACTION", "shape": [config.action_dim]}}


def config_json(config: VLAConfig) -> dict[str, Any]:
    """config.json's content for a ceed policy: parses as the plugin's `CeedConfig`."""
    inputs, outputs = feature_dicts(config)
    vla = dataclasses.asdict(config)
    vla = {f.name: vla[f.name] for f in dataclasses.fields(VLAConfig)}
    return {
        "type": POLICY_TYPE,
        "n_obs_steps": 1,
        "input_features": inputs,
        "output_features": outputs,
        "normalization_mapping": dict(NORMALIZATION_MAPPING),
        **vla,
    }


def vla_config_from_json(data: dict[str, Any]) -> VLAConfig:
    """The `VLAConfig` inside a config.json of this layout; everything else (LeRobot's own fields,
    decoding defaults) is ignored here. Feature shapes are taken from `input_features` so a config
    edited by LeRobot (renamed cameras, another state size) is what the network is built with."""
    names = {f.name for f in dataclasses.fields(VLAConfig)}
    vla = {k: v for k, v in data.items() if k in names}
    inputs = data.get("input_features") or {}
    outputs = data.get("output_features") or {}
    cams = [(k, v) for k, v in inputs.items() if v.get("type") == "VISUAL"]
    if cams:
        vla["image_keys"] = [k for k, _ in cams]
        shapes = [v["shape"] for _, v in cams]
        # (3, 0, 0) marks a size the policy was not told (built without a dataset's features)
        vla["image_shapes"] = shapes if all(min(s) > 0 for s in shapes) else None
    if STATE_KEY in inputs:
        vla["state_dim"] = int(inputs[STATE_KEY]["shape"][0])
    if ACTION_KEY in outputs:
        vla["action_dim"] = int(outputs[ACTION_KEY]["shape"][0])
    return VLAConfig.from_dict(vla)


def is_legacy(meta: dict[str, Any]) -> bool:
    """True for the first ceed layout (config.json = {format_version: 1, policy, backbone, ...})."""
    return "type" not in meta and "policy" in meta and "backbone" in meta


def stats_dict(action_tokenizer: ActionTokenizer, state_normalizer: StateNormalizer) -> dict[str, dict]:
    """The statistics in LeRobot's `dataset_stats` form (tensors per feature and statistic)."""
    return {
        ACTION_KEY: {"q01": action_tokenizer.q01.clone(), "q99": action_tokenizer.q99.clone()},
        STATE_KEY: {"mean": state_normalizer.mean.clone(), "std": state_normalizer.std.clone()},
    }


def policy_features(config: VLAConfig):
    """(input_features, output_features) as LeRobot `PolicyFeature`s."""
    from lerobot.configs import FeatureType, PolicyFeature

    inputs, outputs = feature_dicts(config)

    def convert(d: dict) -> dict:
        return {k: PolicyFeature(type=FeatureType(v["type"]), shape=tuple(v["shape"])) for k, v in d.items()}

    return convert(inputs), convert(outputs)


def make_processors(input_features, output_features, stats: dict | None, device: str = "cpu"):
    """LeRobot's pipeline pair for this policy: rename -> batch -> device -> normalise, and
    unnormalise -> cpu, with state mean/std and action quantiles."""
    from lerobot.configs import NormalizationMode
    from lerobot.processor import (
        AddBatchDimensionProcessorStep,
        DeviceProcessorStep,
        NormalizerProcessorStep,
        RenameObservationsProcessorStep,
        UnnormalizerProcessorStep,
    )
    from lerobot.processor.factory import make_policy_processor_pipelines

    norm_map = {_feature_type(k): NormalizationMode(v) for k, v in NORMALIZATION_MAPPING.items()}
    features = {**input_features, **output_features}
    return make_policy_processor_pipelines(
        input_steps=[
            RenameObservationsProcessorStep(rename_map={}),
            AddBatchDimensionProcessorStep(),
            DeviceProcessorStep(device=device),
            NormalizerProcessorStep(features=features, norm_map=norm_map, stats=stats),
        ],
        output_steps=[
            UnnormalizerProcessorStep(features=output_features, norm_map=norm_map, stats=stats),
            DeviceProcessorStep(device="cpu"),
        ],
    )


def _feature_type(name: str):
    from lerobot.configs import FeatureType

    return FeatureType(name)


def save_processors(directory: Path, config: VLAConfig, stats: dict) -> None:
    inputs, outputs = policy_features(config)
    pre, post = make_processors(inputs, outputs, stats)
    pre.save_pretrained(str(directory))
    post.save_pretrained(str(directory))


def read_stats(directory: Path) -> tuple[ActionTokenizer, StateNormalizer]:
    """Action quantiles and state mean/std from the checkpoint's preprocessor normaliser step."""
    from lerobot.processor import NormalizerProcessorStep, PolicyProcessorPipeline

    name = "policy_preprocessor.json"
    if not (Path(directory) / name).is_file():
        raise CheckpointError(
            f"checkpoint {directory} has no {name}: its statistics (state mean/std, action q01/q99) are "
            "missing; re-save it with `ceed checkpoint convert` or LeRobot's training script"
        )
    try:
        pre = PolicyProcessorPipeline.from_pretrained(str(directory), config_filename=name)
    except Exception as e:  # LeRobot raises assorted types for broken processor files
        raise CheckpointError(f"{Path(directory) / name} cannot be loaded: {e}") from e
    steps = [s for s in pre.steps if isinstance(s, NormalizerProcessorStep)]
    stats = steps[0]._tensor_stats if steps else {}
    try:
        action, state = stats[ACTION_KEY], stats[STATE_KEY]
        return (
            ActionTokenizer(q01=action["q01"].float().cpu(), q99=action["q99"].float().cpu()),
            StateNormalizer(mean=state["mean"].float().cpu(), std=state["std"].float().cpu()),
        )
    except KeyError as e:
        raise CheckpointError(
            f"{Path(directory) / name} lacks the statistic {e} (needs action q01/q99 and "
            f"observation.state mean/std; has {sorted((k, sorted(v)) for k, v in stats.items())})"
        ) from e


def identity_normalizers(config: VLAConfig) -> tuple[ActionTokenizer, StateNormalizer]:
    """Normalisers for a policy whose inputs and outputs LeRobot's processors already (un)normalise."""
    d, s = config.action_dim, config.state_dim
    return (
        ActionTokenizer(q01=-torch.ones(d), q99=torch.ones(d), n_bins=config.n_bins),
        StateNormalizer(mean=torch.zeros(s), std=torch.ones(s)),
    )
