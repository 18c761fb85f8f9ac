"""LeRobot's processors for the ceed policy: rename -> batch -> device -> normalise (state mean/std,
action quantiles, images as they are), and unnormalise -> cpu. The same pipelines are written into
every checkpoint `ceed` saves (`ceed_vla.policy.lerobot_layout.make_processors`)."""

from __future__ import annotations

from ceed_vla.policy.lerobot_layout import make_processors

from .configuration_ceed import CeedConfig


def make_ceed_pre_post_processors(config: CeedConfig, dataset_stats=None):
    config.sync_features()
    return make_processors(config.input_features, config.output_features, dataset_stats, device=config.device)
