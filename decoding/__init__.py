"""ceed_vla.decoding: greedy AR, exact Jacobi and early-exit Jacobi decoding of action-token chunks for
any Hugging Face causal LM given prefix embeddings and the action-token id range.

Imports nothing else of ceed_vla.
"""

from .backends import BackendUnsupportedError, make_backend
from .config import DecodeConfig, DecodeConfigError, DecodeInputError, DecodeOutput, DecodeStats
from .decode import decode
from .guess import guess_from_previous_chunk
from .step import StepResult, jacobi_step, jacobi_step_reference

__all__ = [
    "BackendUnsupportedError",
    "DecodeConfig",
    "DecodeConfigError",
    "DecodeInputError",
    "DecodeOutput",
    "DecodeStats",
    "StepResult",
    "decode",
    "guess_from_previous_chunk",
    "jacobi_step",
    "jacobi_step_reference",
    "make_backend",
]
