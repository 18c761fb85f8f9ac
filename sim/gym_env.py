"""The MetaWorld suite as gymnasium environments, in LeRobot's terms.

    import gymnasium as gym
    env = gym.make("ceed_vla.sim.gym_env:ceed/MetaWorld-push-v0", camera="corner2,gripperPOV")
    obs, info = env.reset(seed=100_000_000)   # the first evaluation seed of `ceed eval`

Every task of `ceed_vla.sim.tasks` is registered as `ceed/MetaWorld-<task>-v0` when this module is
imported (the `module:id` form above imports it). Observations use the raw keys LeRobot's envs
return, which `lerobot.envs.utils.preprocess_observation` turns into the policy's features:

    pixels              [H, W, 3] uint8 for one camera (-> observation.image), or a dict
                        camera -> [H, W, 3] for several (-> observation.images.<camera>)
    agent_pos           [4] float32: end-effector x, y, z (m), gripper opening (-> observation.state)
    environment_state   [39] float64: MetaWorld's full state (-> observation.environment_state)

`task_description` is the instruction LeRobot's eval hands the policy: the held-out paraphrase, or
with `instructions="train"` the first training one (as `ceed eval --instructions`).
`info["is_success"]` is MetaWorld's success flag, and an episode terminates on success as
LeRobot's MetaWorld env does; it is truncated at `max_episode_steps` (the horizon `ceed eval` uses).
A seeded reset draws the same layout as `MetaWorldEnv.reset(seed)`, so `ceed eval`'s seeds
(`ceed_vla.sim.seeds.split_seed`) give the same episodes here. Rendering is the same as `ceed
eval`'s: the same camera framing, image size and goal markers.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from ceed_vla.sim.env import EnvConfig, MetaWorldEnv, Observation
from ceed_vla.sim.tasks import TASKS
from gymnasium import spaces

ENV_ID_FORMAT = "ceed/MetaWorld-{task}-v0"
_SEED_HIGH = 2**31 - 1  # an unseeded reset draws a layout seed from the env's own generator


def env_id(task: str) -> str:
    return ENV_ID_FORMAT.format(task=task)


class CeedMetaWorld(gym.Env):
    """One MetaWorld task with LeRobot's observation keys; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": MetaWorldEnv.control_hz}

    def __init__(
        self,
        task: str,
        image_size: int = EnvConfig.image_size,  # EnvConfig's defaults: one source for both
        camera: str = EnvConfig.camera,
        max_episode_steps: int = EnvConfig.max_episode_steps,
        goal_marker_radius: float = EnvConfig.goal_marker_radius,
        instructions: str = "eval",
        render_mode: str | None = "rgb_array",
    ):
        super().__init__()
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        if instructions not in ("train", "eval"):
            raise ValueError(
                f"instructions must be 'train' or 'eval' (as in ceed eval), got {instructions!r}"
            )
        self.config = EnvConfig(task, image_size, camera, max_episode_steps, goal_marker_radius)
        self.render_mode = render_mode
        self.task = self.config.spec.name
        spec = self.config.spec  # LeRobot's eval hands `task_description` to the policy as its "task"
        self.task_description = (
            spec.eval_instruction if instructions == "eval" else spec.train_instructions[0]
        )
        image = spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        cameras = self.config.cameras  # name -> feature key
        pixels = image if len(cameras) == 1 else spaces.Dict({c: image for c in cameras})
        self.observation_space = spaces.Dict(
            {
                "pixels": pixels,
                "agent_pos": spaces.Box(-np.inf, np.inf, (4,), dtype=np.float32),
                "environment_state": spaces.Box(-np.inf, np.inf, (39,), dtype=np.float64),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        self._env: MetaWorldEnv | None = None  # built on the first reset (MuJoCo and EGL are slow to start)
        self._last: Observation | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        layout = int(seed) if seed is not None else int(self.np_random.integers(0, _SEED_HIGH))
        if self._env is None:
            self._env = MetaWorldEnv(self.config)
        self._last = self._env.reset(layout)
        return self._format(self._last), {"is_success": False, "seed": layout, "task": self.task}

    def step(self, action):
        if self._env is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,) (dx, dy, dz, grip in [-1, 1]), got {action.shape}")
        result = self._env.step(action)
        self._last = result.observation
        info = {**result.info, "is_success": result.success, "task": self.task}
        return self._format(self._last), result.reward, result.success, result.truncated, info

    def render(self) -> np.ndarray | None:
        """The last observation's cameras, one above the other [H * cameras, W, 3]."""
        if self.render_mode is None or self._last is None:
            return None
        return self._last.frame()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def _format(self, obs: Observation) -> dict[str, Any]:
        cameras = self.config.cameras
        pixels = obs.image if len(cameras) == 1 else {name: obs.images[key] for name, key in cameras.items()}
        return {"pixels": pixels, "agent_pos": obs.state, "environment_state": obs.environment_state}


def register_all() -> list[str]:
    """Register every task (idempotent); returns the ids."""
    ids = []
    for task in TASKS:
        name = env_id(task)
        if name not in gym.registry:
            gym.register(
                id=name,
                entry_point=f"{__name__}:CeedMetaWorld",
                kwargs={"task": task},
                max_episode_steps=None,  # the env truncates itself at its own horizon
                disable_env_checker=True,
            )
        ids.append(name)
    return ids


register_all()
