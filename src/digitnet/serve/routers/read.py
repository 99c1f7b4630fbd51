"""`POST /v1/read`: the whole number in an image, digit by digit, with boxes.

The same inputs as `/v1/predict` (multipart field `file`, JSON `{"image_base64"}`, or JSON
`{"pixels"}`, here any H×W rows), the same limits and the same JSON errors. Decoding and reading
run in the threadpool, bounded like predictions by `ConcurrencyLimitMiddleware`; the reader comes
from the `get_reader` dependency.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from digitnet.inference.reader import NumberReading, Reader
from digitnet.serve.inputs import Item, decode_item
from digitnet.serve.routers.predict import ERRORS, body_doc, read_items
from digitnet.serve.schemas import ModelInfo, ReadDigit, ReadRequest, ReadResponse
from digitnet.serve.state import ServeState, get_reader, get_state

router = APIRouter(tags=["read"])


def read_item(reader: Reader, item: Item, max_bytes: int) -> NumberReading:
    """Decode (415/422 as for predictions), then read: one call, in a worker thread."""
    return reader.read(decode_item(item, max_bytes))


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
    items = await read_items(request, batch=False, single=ReadRequest)
    reading = await run_in_threadpool(read_item, reader, items[0], state.limits.max_body_bytes)
    info = ModelInfo(name=reader.name, version=reader.version)
    body: Any = to_response(reading, info)
    return Response(body.model_dump_json(), media_type="application/json")
