"""`POST /v1/read`: the whole number in an image, digit by digit, with boxes.

The same inputs as `/v1/predict` (multipart field `file`, JSON `{"image_base64"}`, or JSON
`{"pixels"}`, here any H×W rows), the same limits and the same JSON errors: decoding goes through
`serve.decoding.decode_upload` under the process's memory budget (at up to `READ_MAX_SIDE` px,
where a prediction needs 640), and the reading runs in that decoding thread; the request holds a
slot of `ConcurrencyLimitMiddleware` like a prediction. The reader comes from `get_reader`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from digitnet.inference.lines import READ_MAX_SIDE
from digitnet.inference.reader import NumberReading, Reader
from digitnet.serve.decoding import decode_upload
from digitnet.serve.inputs import Item
from digitnet.serve.routers.predict import ERRORS, body_doc, read_items
from digitnet.serve.schemas import ModelInfo, ReadDigit, ReadRequest, ReadResponse
from digitnet.serve.state import ServeState, get_reader, get_state

router = APIRouter(tags=["read"])


async def read_item(reader: Reader, item: Item, state: ServeState) -> NumberReading:
    """Decode (415/413/422/503 as for predictions) within the memory budget, then read; the digits'
    28 × 28 images are made in that thread too, not on the event loop."""

    def read(img: Any) -> NumberReading:
        reading = reader.read(img)
        reading.images()
        return reading

    if item.pixels is not None:  # JSON pixels: already an array, bounded by the body cap
        return await run_in_threadpool(read, item.pixels)
    limits = state.limits
    return await decode_upload(
        item.data or b"",
        read,
        budget=state.decode_budget,
        deadline=time.monotonic() + limits.request_timeout_s,
        max_bytes=limits.max_body_bytes,
        label=item.label,
        max_side=READ_MAX_SIDE,
        retry_after_s=limits.retry_after_s,
        threads=state.decode_threads,
    )


def to_response(reading: NumberReading, info: ModelInfo) -> ReadResponse:
    digits = [
        ReadDigit.model_construct(
            digit=d.digit,
            confidence=round(d.confidence, 6),
            box=list(d.box),
            image=np.round(d.image.astype(np.float64), 4).tolist(),
        )
        for d in reading.digits
    ]
    return ReadResponse.model_construct(
        number=reading.number,
        confidence=round(reading.confidence, 6),
        unsure=reading.unsure,
        digits=digits,
        marks=[list(b) for b in reading.marks],
        model=info,
    )


@router.post(
    "/v1/read",
    response_model=ReadResponse,
    responses=ERRORS,
    openapi_extra=body_doc(ReadRequest, "file", many=False),
    summary="Read the whole number in an image (multipart `file`, JSON base64 image, or JSON pixels)",
)
async def read(
    request: Request, reader: Reader = Depends(get_reader), state: ServeState = Depends(get_state)
) -> Response:
    items = await read_items(request, batch=False, state=state, single=ReadRequest)
    reading = await read_item(reader, items[0], state)
    info = ModelInfo(name=reader.name, version=reader.version)
    body: Any = to_response(reading, info)
    return Response(body.model_dump_json(), media_type="application/json")
