"""The serve room: the FastAPI app (`app.create_app`), its routers (`routers/`), request limits,
metrics, schemas and the draw-a-digit page (`static/`). It never imports training."""

from digitnet.serve.app import create_app

__all__ = ["create_app"]
