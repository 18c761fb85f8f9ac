"""One MetaWorld v3 task with fast headless rendering and the project's observation format.

Rendering (measured on the 2-core CPU machines, Mesa EGL, 128x128): MetaWorld's own settings
(shadow-casting light, 4x multisampling, reflective table) render about 2 frames/s; with shadows,
multisampling and reflections off on the *model* the same frame takes a fraction of that (see
docs/sim.md for numbers). Shadows are turned off on the model, never through scene flags: a scene
flag leaks into the next environment of the process, which then renders black.

Corner cameras render upside down (both axes flipped); frames from them are turned upright here.

Several cameras can watch one scene (`camera="corner2,gripperPOV"`). Their feature keys follow
LeRobot's envs: one camera is `observation.image`, several are `observation.images.<camera>`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np
import torch
from ceed_vla.sim.tasks import TaskSpec, get_task

from ceed_vla.keys import CAMERA_KEY_PREFIX, IMAGE_KEY, STATE_KEY

CONTROL_HZ = 80
"""MetaWorld's control rate: frame_skip 5 x timestep 2.5 ms = 12.5 ms per env step."""

METAWORLD_MAX_PATH_LENGTH = 500
"""MetaWorld refuses to step past this many steps in one episode."""

DEFAULT_MAX_EPISODE_STEPS = 250
"""Horizon used by recording and evaluation (3.1 s at 80 Hz). MetaWorld allows 500; its scripted
experts on MT10 succeed in 46-114 steps on average and at most 249 (peg-insert-side) over 30 seeds
per task (docs/sim.md), so 250 keeps every expert success while a failure costs half the CPU."""

FORWARD_MODELS = ("arm", "kinematic")
"""How `MetaWorldEnv.predict_state` rolls the state forward for planning ahead."""

DEFAULT_GOAL_MARKER_RADIUS = 0.03
"""Radius (m) of the rendered goal sphere of tasks whose goal is a free point (MetaWorld draws 2 cm)."""
DEFAULT_CAMERA = "corner2"
"""The camera recordings, evaluations and the sim robot use unless told otherwise."""

SINGLE_CAMERA_KEY = IMAGE_KEY

_CORNER_CAMERAS = ("corner", "corner2", "corner3", "corner4")


@dataclass(frozen=True)
class FreeCamera:
    """A camera defined by what it looks at rather than by the scene file (MuJoCo's free camera)."""

    lookat: tuple[float, float, float]  # m, world frame
    distance: float  # m from `lookat`
    azimuth: float  # degrees
    elevation: float  # degrees, negative looks down


FREE_CAMERAS = {
    # The work area framed from the table's far side, 50 degrees down: every task's object, goal and
    # the gripper's path fill the frame, where corner2 spends most pixels on the arm and the room.
    "workspace": FreeCamera(lookat=(0.0, 0.75, 0.1), distance=1.0, azimuth=180.0, elevation=-50.0),
}


def parse_cameras(camera: str) -> tuple[str, ...]:
    """`"corner2,gripperPOV"` -> `("corner2", "gripperPOV")`, refusing an empty or repeated name."""
    names = tuple(c.strip() for c in str(camera).split(","))
    if not all(names):
        raise ValueError(f"camera must be one camera name or several, comma-separated; got {camera!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"camera {camera!r} names a camera twice")
    return names


def camera_feature_keys(camera: str, per_camera_keys: bool = False) -> dict[str, str]:
    """Camera name -> the observation key its frames are stored and fed under.

    One camera is `observation.image` unless `per_camera_keys` (a policy trained on one camera of a
    multi-camera recording reads `observation.images.<camera>`); several are always per camera.
    """
    names = parse_cameras(camera)
    if len(names) == 1 and not per_camera_keys:
        return {names[0]: SINGLE_CAMERA_KEY}
    return {c: CAMERA_KEY_PREFIX + c for c in names}


def cameras_for_image_keys(image_keys: list[str] | tuple[str, ...], camera: str | None) -> str:
    """The `camera` setting that renders a policy's `image_keys`; `camera` is what was asked (None: any).

    `observation.images.<name>` names its camera; `observation.image` is one camera, the one asked for
    (default DEFAULT_CAMERA). Raises ValueError, naming both, when they cannot agree.
    """
    keys = list(image_keys)
    if keys == [SINGLE_CAMERA_KEY]:
        chosen = camera or DEFAULT_CAMERA
    elif keys and all(k.startswith(CAMERA_KEY_PREFIX) and len(k) > len(CAMERA_KEY_PREFIX) for k in keys):
        chosen = ",".join(k[len(CAMERA_KEY_PREFIX) :] for k in keys)
    else:
        raise ValueError(
            f"the policy reads cameras {keys}; the simulator renders {SINGLE_CAMERA_KEY!r} (one camera) or "
            f"'{CAMERA_KEY_PREFIX}<camera>' keys, so this checkpoint's image keys cannot be simulated"
        )
    rendered = camera_feature_keys(camera, reads_per_camera_keys(keys)) if camera is not None else None
    if rendered is not None and list(rendered.values()) != keys:
        raise ValueError(
            f"the policy reads cameras {keys}, but --camera {camera!r} renders "
            f"{list(rendered.values())}; pass --camera {chosen!r} or leave it out"
        )
    return chosen


def reads_per_camera_keys(image_keys: list[str] | tuple[str, ...]) -> bool:
    """Whether a policy's cameras are `observation.images.<camera>` (even one) or `observation.image`."""
    return list(image_keys) != [SINGLE_CAMERA_KEY]


_CAMERA_POSITIONS = {"corner2": (0.75, 0.075, 0.7)}  # closer framing of the work area, as LeRobot uses
_GOAL_MARKER_RGBA = {
    "reach": (0.9, 0.05, 0.05, 1.0),
    "push": (0.05, 0.85, 0.05, 1.0),
    "pick-place": (0.1, 0.2, 1.0, 1.0),
}


@dataclass
class EnvConfig:
    """How one task is simulated and seen."""

    task: str
    image_size: int = 64
    camera: str = DEFAULT_CAMERA
    """One camera, or several comma-separated (each rendered at `image_size`)."""
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    goal_marker_radius: float = DEFAULT_GOAL_MARKER_RADIUS
    """Radius (m) of the rendered goal sphere for tasks whose goal is a free point (a site: no contact)."""
    per_camera_keys: bool = False
    """Name even a single camera `observation.images.<camera>` (see `camera_feature_keys`)."""
    spec: TaskSpec = field(init=False, repr=False)

    @property
    def cameras(self) -> dict[str, str]:
        """Camera name -> feature key, in order."""
        return camera_feature_keys(self.camera, self.per_camera_keys)

    def __post_init__(self) -> None:
        self.spec = get_task(self.task)
        parse_cameras(self.camera)
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [8, 1024] pixels, got {self.image_size!r}")
        if not 1 <= self.max_episode_steps <= METAWORLD_MAX_PATH_LENGTH:
            raise ValueError(
                f"max_episode_steps must be in [1, {METAWORLD_MAX_PATH_LENGTH}] (MetaWorld's own limit), "
                f"got {self.max_episode_steps!r}"
            )
        if self.goal_marker_radius <= 0:
            raise ValueError(f"goal_marker_radius must be positive, got {self.goal_marker_radius!r}")


@dataclass
class Observation:
    """One observation, unbatched, in numpy."""

    images: dict[str, np.ndarray]  # feature key -> [H, W, 3] uint8, upright, in camera order
    state: np.ndarray  # [4] float32: end-effector x, y, z (m) and gripper opening in [0, 1]
    environment_state: np.ndarray  # [39] float64: MetaWorld's full state vector (goal observable)

    @property
    def image(self) -> np.ndarray:
        """The first camera's frame."""
        return next(iter(self.images.values()))

    def frame(self) -> np.ndarray:
        """Every camera, one above the other [H * cameras, W, 3]: one column of a rollout strip."""
        return np.concatenate(list(self.images.values()), axis=0)


@dataclass
class StepResult:
    observation: Observation | None  # None when the step was taken without rendering
    success: bool
    truncated: bool
    reward: float
    info: dict[str, Any]


class MetaWorldEnv:
    """A MetaWorld v3 task with seeded resets, headless rendering and policy-ready observations.

    `reset(seed)` draws object and goal positions from `seed` alone, so an episode is reproducible
    from its seed. Use as a context manager or call `close()`: the EGL context must be released
    before interpreter exit.
    """

    control_hz = CONTROL_HZ

    def __init__(self, config: EnvConfig):
        self.config = config
        self.spec = config.spec
        self._env = _make_metaworld_env(self.spec.env_name)
        self._configure_model(self._env.model)
        size = config.image_size
        self._renderer = mujoco.Renderer(self._env.model, height=size, width=size)
        self._steps = 0
        self._closed = False
        self._last_raw: np.ndarray | None = None
        self._scratch: mujoco.MjData | None = None  # the arm forward model's physics copy
        self._scratch_state: np.ndarray | None = None

    # ------------------------------------------------------------------ set-up
    def _configure_model(self, model: mujoco.MjModel) -> None:
        model.light_castshadow[:] = 0
        model.vis.quality.offsamples = 0
        model.mat_reflectance[:] = 0
        size = self.config.image_size
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        # feature key -> (what the renderer looks through, whether the frame must be turned upright)
        self._cameras: dict[str, tuple[str | mujoco.MjvCamera, bool]] = {
            key: (self._scene_camera(model, name), name in _CORNER_CAMERAS)
            for name, key in self.config.cameras.items()
        }
        if self.spec.show_goal:
            goal = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            if goal >= 0:
                model.site_type[goal] = mujoco.mjtGeom.mjGEOM_SPHERE
                model.site_size[goal] = self.config.goal_marker_radius
                if self.spec.name in _GOAL_MARKER_RGBA:
                    model.site_rgba[goal] = _GOAL_MARKER_RGBA[self.spec.name]

    def _scene_camera(self, model: mujoco.MjModel, camera: str) -> str | mujoco.MjvCamera:
        if camera in FREE_CAMERAS:
            free = FREE_CAMERAS[camera]
            view = mujoco.MjvCamera()
            view.type = mujoco.mjtCamera.mjCAMERA_FREE
            view.lookat[:] = free.lookat
            view.distance = free.distance
            view.azimuth = free.azimuth
            view.elevation = free.elevation
            return view
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            names = [model.camera(i).name for i in range(model.ncam)] + sorted(FREE_CAMERAS)
            raise ValueError(f"camera {camera!r} is not in the {self.spec.name} scene; cameras: {names}")
        if camera in _CAMERA_POSITIONS:
            model.cam_pos[cam_id] = _CAMERA_POSITIONS[camera]
        return camera

    # ------------------------------------------------------------------ API
    @property
    def max_episode_steps(self) -> int:
        return self.config.max_episode_steps

    @property
    def steps(self) -> int:
        """Steps taken since the last reset."""
        return self._steps

    @property
    def raw_state(self) -> np.ndarray:
        """The current raw MetaWorld state [39] (an observation's `environment_state`; its first 4 are
        the `state`), without rendering."""
        self._check_open()
        if self._last_raw is None:
            raise RuntimeError("no episode started: call reset(seed) first")
        return self._last_raw.astype(np.float64)

    def reset(self, seed: int) -> Observation:
        """Start an episode whose object and goal positions are drawn from `seed`."""
        self._check_open()
        self._env.seed(int(seed))
        raw, _ = self._env.reset()
        # MetaWorld moves the goal site on the model after its last forward pass, so until the first
        # step the rendered goal (site_xpos) is stale: the first frame would show it elsewhere.
        mujoco.mj_forward(self._env.model, self._env.data)
        self._steps = 0
        self._last_raw = raw
        return self._observe(raw)

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        """Apply one action (clipped to [-1, 1]); `render=False` skips the camera for speed."""
        self._check_open()
        if self._steps >= self.config.max_episode_steps:
            raise RuntimeError(f"episode already ended after {self._steps} steps: call reset(seed) first")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        raw, reward, _, _, info = self._env.step(action)
        self._steps += 1
        self._last_raw = raw
        return StepResult(
            observation=self._observe(raw) if render else None,
            success=bool(info.get("success", 0.0)),
            truncated=self._steps >= self.config.max_episode_steps,
            reward=float(reward),
            info=info,
        )

    def predict_state(self, state: np.ndarray, actions: np.ndarray, model: str = "kinematic") -> np.ndarray:
        """The state [4] expected after `actions` [d, 4] from `state` [4]: the embodiment's forward model
        for planning ahead (`ceed_vla.scheduler`, `SchedulerConfig.plan_ahead`), one of `FORWARD_MODELS`.

        - `kinematic`: the end effector moved by the sum of the actions' translations times MetaWorld's
          action scale (each clipped to [-1, 1], the sum kept inside the mocap bounds), the gripper as it
          is. It ignores that the hand trails its position target by several steps of motion, which is
          most of its error (docs/sim.md, "Evaluation: `ceed eval`").
        - `arm`: the arm's own dynamics: MuJoCo rolled forward from the simulator's current physics
          state, in a scratch copy, with every contact switched off, so the arm, its position
          controller (the mocap weld) and the gripper actuators move and the world does not. A robot
          knows this much of itself (its joint state, its controller's response); it does not know what
          it will touch. `state` must be the current observation's state (the model starts where the
          simulator is, not where `state` says). The simulator itself is left untouched.
        """
        if model not in FORWARD_MODELS:
            raise ValueError(f"forward model {model!r} is unknown; choose one of {FORWARD_MODELS}")
        state = np.asarray(state, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float64).reshape(-1, 4)
        if state.shape != (4,):
            raise ValueError(f"state has shape {state.shape}; expected (4,)")
        out = state.copy()
        if actions.shape[0] == 0:
            return out
        if model == "arm":
            return self._roll_arm(state, actions)
        moved = np.clip(actions[:, :3], -1.0, 1.0).sum(axis=0) * self._env.action_scale
        out[:3] = np.clip(state[:3] + moved, self._env.mocap_low, self._env.mocap_high)
        return out

    def observe(self) -> Observation:
        """The observation of the current state (renders the camera)."""
        self._check_open()
        if self._last_raw is None:
            raise RuntimeError("no episode started: call reset(seed) first")
        return self._observe(self._last_raw)

    def render(self) -> dict[str, np.ndarray]:
        """Every camera's image [H, W, 3] uint8, upright, by feature key."""
        images = {}
        for key, (camera, flip) in self._cameras.items():
            self._renderer.update_scene(self._env.data, camera=camera)
            image = self._renderer.render()
            images[key] = np.ascontiguousarray(image[::-1, ::-1] if flip else image)
        return images

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._renderer.close()
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _roll_arm(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """`predict_state(..., model="arm")`: MetaWorld's own step (the mocap target moved by each
        clipped action times the action scale, inside the mocap bounds; the gripper's two actuators
        driven by the last action component; `frame_skip` physics steps) on a scratch copy of the
        current physics state, contacts off; the hand and gripper read as the observation reads them."""
        self._check_open()
        if self._last_raw is None:
            raise RuntimeError("no episode started: call reset(seed) first")
        current = self._last_raw[:4].astype(np.float32)
        if not np.allclose(state, current, atol=1e-5):
            raise ValueError(
                f"the arm forward model rolls from the simulator's current state {current.tolist()}, "
                f"but it was given {state.tolist()}: pass the current observation's state, or use "
                "model='kinematic' for any other state"
            )
        env, model = self._env, self._env.model
        spec = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step reads, the mocap targets included
        if self._scratch is None:
            self._scratch = mujoco.MjData(model)
            self._scratch_state = np.empty(mujoco.mj_stateSize(model, spec))
        scratch = self._scratch
        mujoco.mj_getState(model, env.data, self._scratch_state, spec)
        mujoco.mj_setState(model, scratch, self._scratch_state, spec)
        flags = model.opt.disableflags
        model.opt.disableflags = flags | mujoco.mjtDisableBit.mjDSBL_CONTACT
        try:
            for action in np.clip(actions, -1.0, 1.0):
                target = scratch.mocap_pos[0] + action[:3] * env.action_scale
                scratch.mocap_pos[0] = np.clip(target, env.mocap_low, env.mocap_high)
                scratch.mocap_quat[0] = (1.0, 0.0, 1.0, 0.0)
                scratch.ctrl[:] = (action[3], -action[3])
                mujoco.mj_step(model, scratch, nstep=env.frame_skip)
            mujoco.mj_kinematics(model, scratch)
        finally:
            model.opt.disableflags = flags
        fingers = scratch.body("rightclaw").xpos - scratch.body("leftclaw").xpos
        gripper = np.clip(np.linalg.norm(fingers) / 0.1, 0.0, 1.0)
        return np.array([*scratch.body("hand").xpos, gripper], dtype=np.float32)

    def _observe(self, raw: np.ndarray) -> Observation:
        return Observation(
            images=self.render(),
            state=raw[:4].astype(np.float32),
            environment_state=raw.astype(np.float64),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("environment is closed")


def _make_metaworld_env(env_name: str):
    """MetaWorld's goal-observable env whose resets draw positions from `env.seed(...)`."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    cls = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{env_name}-goal-observable"]
    env = cls(seed=0)
    env._freeze_rand_vec = False  # a new goal/object layout at every reset ...
    env.seeded_rand_vec = True  # ... drawn from the env's own seeded generator
    return env


def to_policy_batch(observations: list[Observation], instructions: list[str]) -> dict[str, Any]:
    """Observations as a LeRobot-style batch (docs/interfaces.md)."""
    if len(observations) != len(instructions):
        raise ValueError(f"{len(observations)} observations but {len(instructions)} instructions")
    batch: dict[str, Any] = {}
    for key in observations[0].images if observations else ():
        images = np.stack([o.images[key] for o in observations])  # [B, H, W, 3] uint8
        batch[key] = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, H, W]
    state = torch.from_numpy(np.stack([o.state for o in observations]))  # [B, 4]
    env_state = torch.from_numpy(np.stack([o.environment_state for o in observations]))  # [B, 39]
    return {
        **batch,
        STATE_KEY: state,
        "observation.environment_state": env_state,
        "task": list(instructions),
    }


def quiet_metaworld_warnings() -> None:
    """MetaWorld's scripted policies warn on every step whose gain saturates; the env clips anyway."""
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high", category=UserWarning)
