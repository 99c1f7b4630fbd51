"""digitnet: handwritten-digit recognition done properly.

Importing this package does no work: no torch settings, no model loading, no downloads. The
public names below are imported on first use (`import digitnet` takes 0.02 s; with torch, 1.6 s).

Rooms: `data` (MNIST, verified) → `training` and `inference` → `evaluation` → `serve`, `bench`,
`cli` and `api` (the doors). `models` (the registry) and `checkpoint` (the one loader) sit
beside `data`; `errors` and `utils` are shared by all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["DigitClassifier", "__version__", "load_mnist", "read_number"]

_LAZY = {"DigitClassifier": "digitnet.api", "load_mnist": "digitnet.data", "read_number": "digitnet.api"}

if TYPE_CHECKING:
    from digitnet.api import DigitClassifier, read_number
    from digitnet.data import load_mnist


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'digitnet' has no attribute {name!r}")
