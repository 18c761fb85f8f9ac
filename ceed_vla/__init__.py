"""ceed-vla: a VLA policy with consistency-distilled, early-exit Jacobi decoding.

The parts live in the repository's root folders (policy/, distill/, decoding/, sim/, robot_bridge/)
and are installed as `ceed_vla.<part>` by pyproject's package-dir mapping, the one place that maps
folders to this namespace.
"""

__version__ = "0.1.0"
