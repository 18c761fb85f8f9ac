"""ceed-vla: a VLA policy with consistency-distilled, early-exit Jacobi decoding."""

__version__ = "0.1.0"
