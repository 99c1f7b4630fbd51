"""Request bodies → images → predictions: parsing, decoding under the memory budget, one batched
model call.

Images are opened only as the formats we accept (PNG, JPEG, GIF, BMP, WebP), judged from the
bytes, never from a file name or a Content-Type (`serve.decoding`). A file that is recognisably
another image format is a 415; bytes that are no image at all, truncated data and pixel bombs are
422. Each image is decoded and preprocessed to its 28×28 field in a worker thread, then the fields
go to the model through the process's `MicroBatcher`, together with other requests' images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from digitnet.errors import InputError
from digitnet.inference.predictor import Prediction, Predictor
from digitnet.inference.preprocess import MIN_CONTRAST, preprocess
from digitnet.serve.batcher import MicroBatcher
from digitnet.serve.decoding import SERVER_FORMATS, decode_upload, other_image_format
from digitnet.serve.schemas import PredictRequest, ReadRequest, decode_base64, pixels_to_array
from digitnet.serve.state import ServeState

__all__ = ["SERVER_FORMATS", "Item", "item_from_request", "other_image_format", "predict_items"]


@dataclass(frozen=True)
class Item:
    """One image to classify: MNIST-form pixels (28, 28) float32, or encoded image bytes."""

    pixels: np.ndarray | None = None
    data: bytes | None = None
    preprocess: bool = True
    label: str = "image"  # names the item in error messages, e.g. "items[3]"


def item_from_request(req: PredictRequest | ReadRequest, label: str = "image") -> Item:
    try:
        if req.pixels is not None:  # a reading always finds its ink as a photo's is found
            return Item(pixels=pixels_to_array(req), preprocess=getattr(req, "preprocess", True), label=label)
        return Item(data=decode_base64(req.image_base64 or ""), label=label)
    except InputError as exc:
        raise InputError(f"{label}: {exc}" if label != "image" else str(exc)) from None


def _field(img: Image.Image | np.ndarray) -> tuple[np.ndarray, bool]:
    done = preprocess(img)
    return done.image, done.empty


async def _prepare(item: Item, state: ServeState, deadline: float) -> tuple[np.ndarray, bool]:
    """One item → its (28, 28) float32 field and whether it is empty."""
    if item.pixels is not None:
        if not item.preprocess:  # MNIST-form pixels, fed as they are
            return item.pixels, bool(item.pixels.max() < MIN_CONTRAST)  # no ink: empty, as for photos
        return _field(item.pixels)  # 28×28: microseconds, fine on the event loop
    limits = state.limits
    return await decode_upload(
        item.data or b"",
        _field,
        budget=state.decode_budget,
        deadline=deadline,
        max_bytes=limits.max_body_bytes,
        label=item.label,
        retry_after_s=limits.retry_after_s,
        threads=state.decode_threads,
    )


async def predict_items(
    predictor: Predictor, state: ServeState, items: list[Item], batcher: MicroBatcher
) -> list[Prediction]:
    """Decode and preprocess every item, then one model call through `batcher`; input order kept.

    Images are prepared one after another: a batch of large images never holds more than one
    full-size bitmap of this request in memory, and the memory budget bounds all requests together.
    """
    deadline = time.monotonic() + state.limits.request_timeout_s
    fields: list[np.ndarray] = []
    empty: list[bool] = []
    for it in items:
        field, is_empty = await _prepare(it, state, deadline)
        fields.append(field)
        empty.append(is_empty)
    images = np.stack(fields)
    live = np.asarray([not e for e in empty])
    outputs = await batcher.submit(images[live][:, None]) if live.any() else np.zeros((0, 10), np.float32)
    return predictor.predictions_from_outputs(images, outputs, empty=empty)
