"""The HTTP service: a FastAPI app (REST API + draw-a-digit web page), built by `create_app`.

Imported lazily so `import digitnet.serve` pulls in neither FastAPI nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app"]

if TYPE_CHECKING:
    from digitnet.serve.app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from digitnet.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'digitnet.serve' has no attribute {name!r}")
