"""LeRobot policy plugin for ceed-vla.

LeRobot imports this package when it is installed (`register_third_party_plugins`, which looks for
distributions named `lerobot_policy_*`); importing it registers the policy type ``"ceed"``:

    lerobot-train --policy.type=ceed --dataset.repo_id=... --dataset.root=...
    lerobot-eval  --policy.path=runs/teacher/final --env.type=ceed_metaworld --env.task=push ...

It also registers the env type ``"ceed_metaworld"`` (`env_ceed.CeedMetaWorldEnv`): ceed's MetaWorld
suite, rendered as `ceed eval` renders it.

A thin layer over `ceed_vla.policy`: the config (`CeedConfig`, the VLA's fields plus decoding), the
policy wrapper (`CeedPolicy`) and LeRobot's processors (`make_ceed_pre_post_processors`). The
checkpoint layout is the one `ceed` jobs write (see `ceed_vla.policy.lerobot_layout`).
"""

from .configuration_ceed import CeedConfig
from .env_ceed import CeedMetaWorldEnv

__all__ = ["CeedConfig", "CeedMetaWorldEnv", "CeedPolicy", "make_ceed_pre_post_processors"]


def __getattr__(name: str):
    # The policy and processors import torch-heavy modules; LeRobot imports them by convention
    # (`modeling_ceed`, `processor_ceed`) only when a ceed policy is actually built.
    if name == "CeedPolicy":
        from .modeling_ceed import CeedPolicy

        return CeedPolicy
    if name == "make_ceed_pre_post_processors":
        from .processor_ceed import make_ceed_pre_post_processors

        return make_ceed_pre_post_processors
    raise AttributeError(name)
