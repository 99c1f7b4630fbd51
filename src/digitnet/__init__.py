"""digitnet: handwritten-digit recognition done properly.

Importing this package does no work: no torch settings, no model loading, no downloads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["DigitClassifier", "__version__", "load_mnist"]

if TYPE_CHECKING:
    from digitnet.api import DigitClassifier
    from digitnet.data import load_mnist


def __getattr__(name: str) -> Any:
    # Lazy so that `import digitnet` stays cheap (torch is imported only when needed).
    if name == "DigitClassifier":
        from digitnet.api import DigitClassifier

        return DigitClassifier
    if name == "load_mnist":
        from digitnet.data import load_mnist

        return load_mnist
    raise AttributeError(f"module 'digitnet' has no attribute {name!r}")
