"""MetaWorld's scripted experts behind the project's policy API.

The expert reads the raw MetaWorld state (`observation.environment_state`, goal observable) and
the instruction (`task`), which names the task through `ceed_vla.sim.tasks`. It plans one step at a
time, so its chunks have length 1:

    obs_t --predict_action_chunk--> [B, 1, 4] --select_action pops--> action_t --env--> obs_t+1
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch
from ceed_vla.sim.env import quiet_metaworld_warnings
from ceed_vla.sim.tasks import TaskSpec, task_for_instruction

ACTION_DIM = 4


class ScriptedExpert:
    """MetaWorld's hand-written policy for every registered task, chunk size 1.

    `last_decode_stats` is always None: the expert does not decode.
    """

    chunk_size = 1
    last_decode_stats = None

    def __init__(self) -> None:
        quiet_metaworld_warnings()
        self._policies: dict[str, Any] = {}
        self._queue: deque[torch.Tensor] = deque()

    def reset(self) -> None:
        self._queue.clear()

    def select_action(self, obs: dict[str, Any]) -> torch.Tensor:
        """Next action [B, 4], refilling the queue from `predict_action_chunk` when it is empty."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs)  # [B, K, D]
            self._queue.extend(chunk.unbind(dim=1))
        return self._queue.popleft()

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any], **_: Any) -> torch.Tensor:
        """Expert actions [B, 1, 4] in [-1, 1]; extra keyword arguments (decoding options) are ignored."""
        if "observation.environment_state" not in obs:
            raise KeyError(
                "the scripted expert needs 'observation.environment_state' (the raw MetaWorld state); "
                "observations from ceed_vla.sim.env.to_policy_batch carry it"
            )
        states = _as_numpy(obs["observation.environment_state"])  # [B, 39]
        tasks = obs["task"]
        if isinstance(tasks, str):
            tasks = [tasks]
        if len(tasks) != states.shape[0]:
            raise ValueError(f"batch has {states.shape[0]} states but {len(tasks)} task strings")
        actions = np.stack([self.act(task_for_instruction(t), s) for t, s in zip(tasks, states, strict=True)])
        return torch.from_numpy(actions).unsqueeze(1)  # [B, 1, 4]

    def act(self, spec: TaskSpec, state: np.ndarray) -> np.ndarray:
        """One expert action [4] float32 in [-1, 1] for a raw MetaWorld state [39]."""
        policy = self._policy(spec)
        return np.clip(policy.get_action(state), -1.0, 1.0).astype(np.float32)

    def _policy(self, spec: TaskSpec):
        if spec.name not in self._policies:
            from metaworld.policies import ENV_POLICY_MAP

            self._policies[spec.name] = ENV_POLICY_MAP[spec.env_name]()
        return self._policies[spec.name]


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x[None] if x.ndim == 1 else x
