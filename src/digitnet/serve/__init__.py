"""The serve room: the FastAPI app (`app.create_app`), its routers (`routers/`), request limits,
metrics, schemas and the draw-a-digit page (`static/`). It never imports training.

`create_app` is imported on first use, so `digitnet serve` can check its arguments with
`serve.limits` before torch is loaded (a bad flag answers in 0.3 s, not 2 s).
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
