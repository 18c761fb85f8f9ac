"""ceed-vla: a VLA policy with consistency-distilled, early-exit Jacobi decoding."""

import os as _os

__version__ = "0.1.0"

# An installed copy maps ceed_vla.<part> to the repository's root folders (pyproject's package-dir).
# Run straight from a checkout with nothing installed (e.g. a GPU machine without registry access),
# the same mapping comes from adding the repository root to this package's search path.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "decoding", "__init__.py")) and _root not in __path__:
    __path__.append(_root)
