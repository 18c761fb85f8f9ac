"""`--env.type=ceed_metaworld`: ceed's MetaWorld suite as a LeRobot env config.

    lerobot-eval --policy.path=runs/teacher/final --env.type=ceed_metaworld --env.task=push \
        --eval.n_episodes=10 --eval.batch_size=1 --seed=100000000 --policy.device=cpu

runs an unmodified `lerobot-eval` on the same episodes as `ceed eval --tasks push --episodes 10`
(LeRobot seeds episode i with `seed + i`; ceed's evaluation seeds start at 10^8, one per episode),
rendered as `ceed eval` renders them (`ceed_vla.sim.gym_env`). LeRobot's own `--env.type=metaworld`
runs too, but renders 480x480 frames from its own scene settings, which a policy trained on ceed's
recordings has never seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ceed_vla.sim.env import (
    CONTROL_HZ,
    DEFAULT_CAMERA,
    DEFAULT_GOAL_MARKER_RADIUS,
    DEFAULT_MAX_EPISODE_STEPS,
    camera_feature_keys,
)
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig

GYM_MODULE = "ceed_vla.sim.gym_env"


@EnvConfig.register_subclass("ceed_metaworld")
@dataclass
class CeedMetaWorldEnv(EnvConfig):
    task: str = "push"  # a ceed_vla.sim task name
    fps: int = CONTROL_HZ
    episode_length: int = DEFAULT_MAX_EPISODE_STEPS
    image_size: int = 64
    camera: str = DEFAULT_CAMERA  # one camera or several, comma-separated: the recording's
    goal_marker_radius: float = DEFAULT_GOAL_MARKER_RADIUS
    instructions: str = "train"  # "train": the first training paraphrase, "eval": the held-out one
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.instructions not in ("train", "eval"):
            raise ValueError(f"instructions must be 'train' or 'eval', got {self.instructions!r}")
        image = PolicyFeature(type=FeatureType.VISUAL, shape=(self.image_size, self.image_size, 3))
        keys = camera_feature_keys(self.camera)
        self.features = {
            "action": PolicyFeature(type=FeatureType.ACTION, shape=(4,)),
            "agent_pos": PolicyFeature(type=FeatureType.STATE, shape=(4,)),
        }
        self.features_map = {"action": "action", "agent_pos": "observation.state"}
        for name, key in keys.items():
            raw = "pixels" if len(keys) == 1 else f"pixels/{name}"
            self.features[raw] = image
            self.features_map[raw] = key

    @property
    def package_name(self) -> str:
        return GYM_MODULE  # imported by LeRobot when the id is not registered yet

    @property
    def gym_id(self) -> str:
        from ceed_vla.sim.gym_env import env_id

        return env_id(self.task)

    @property
    def gym_kwargs(self) -> dict:
        return {
            "image_size": self.image_size,
            "camera": self.camera,
            "max_episode_steps": self.episode_length,
            "goal_marker_radius": self.goal_marker_radius,
            "instructions": self.instructions,
        }
