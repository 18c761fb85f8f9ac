"""Which policy drives the bridge, chosen by the `policy` parameter: any spec of `ceed_vla.policies`
("checkpoint:DIR", "expert", "sine[:AMPLITUDE]").

The bridge needs only the policy API of docs/interfaces.md (`reset`, `predict_action_chunk`), so any
object with that API can also be handed to the node directly.
"""

from __future__ import annotations

from ceed_vla import policies
from ceed_vla.policies import PolicySpecError, SinePolicy

__all__ = ["PolicySpecError", "SinePolicy", "load_policy"]


def load_policy(spec: str, action_dim: int, control_rate_hz: float, device: str = "cpu"):
    """Build the policy named by `spec` for a robot with `action_dim` actions at `control_rate_hz`."""
    return policies.load_policy(spec, action_dim=action_dim, control_rate_hz=control_rate_hz, device=device)
