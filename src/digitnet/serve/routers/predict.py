"""`POST /v1/predict` and `POST /v1/predict/batch`.

Each takes JSON (`PredictRequest` / `BatchRequest`) or multipart (field `file`, or repeated `files`
for a batch). Admission is done before the handler runs (`ConcurrencyLimitMiddleware`: slots and
a bounded queue); decoding runs in the threadpool under the memory budget (`serve.decoding`), and
the model call goes through the micro-batcher with other requests' images (`serve.batcher`). The
predictor and the batcher come from the `get_predictor` / `get_batcher` dependencies. Responses are
built with
`model_construct` and serialised by pydantic-core directly: the values come from the model, so
re-validating 784 floats per request would be pure overhead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from digitnet.inference.predictor import Prediction, Predictor
from digitnet.serve.batcher import MicroBatcher
from digitnet.serve.decoding import run_charged
from digitnet.serve.inputs import Item, item_from_request, predict_items
from digitnet.serve.responses import HTTPError, validation_message
from digitnet.serve.schemas import (
    MAX_BATCH,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    ReadRequest,
)
from digitnet.serve.state import ServeState, get_batcher, get_predictor, get_state

router = APIRouter(tags=["predict"])
JSON_INLINE_BYTES = (
    64 * 1024
)  # a 28×28 pixels request is ~3 KB; larger bodies are charged and parsed in a thread
JSON_BYTES_PER_BODY_BYTE = 24  # what parsing holds per body byte (measured: 82 MB for 3.7 MB of pixels)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (413, "body over the size cap"),
        (415, "not JSON/multipart, or an image format we refuse"),
        (422, "undecodable image, wrong shape, NaN or out-of-range pixels, pixel bomb"),
        (408, "the body did not arrive in time"),
        (503, "model not loaded yet, or the queue is full / too long (see Retry-After)"),
    )
}


def body_doc(schema: type, field: str, many: bool) -> dict[str, Any]:
    """OpenAPI for a body read by hand: the JSON model, or multipart with one/many files."""
    file_schema = {"type": "string", "format": "binary"}
    part = (
        {"type": "array", "items": file_schema, "minItems": 1, "maxItems": MAX_BATCH} if many else file_schema
    )
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema.__name__}"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [field],
                        "properties": {field: part},
                        "additionalProperties": False,
                    }
                },
            },
        }
    }


def _parse_json(body: bytes, batch: bool, single: type[PredictRequest] | type[ReadRequest]) -> list[Item]:
    try:
        if batch:
            parsed = BatchRequest.model_validate_json(body)
            return [item_from_request(req, f"items[{i}]") for i, req in enumerate(parsed.items)]
        return [item_from_request(single.model_validate_json(body))]
    except ValidationError as exc:
        raise HTTPError(422, "invalid_input", validation_message(exc.errors(include_url=False))) from None


async def read_items(
    request: Request,
    *,
    batch: bool,
    state: ServeState,
    single: type[PredictRequest] | type[ReadRequest] = PredictRequest,
) -> list[Item]:
    """The images of a request: JSON (`single`, or a `BatchRequest`) or multipart `file`/`files`."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        body = await request.body()
        if len(body) <= JSON_INLINE_BYTES:  # a 28×28 request: parsed at once, nothing to charge
            return _parse_json(body, batch, single)
        # Parsing holds Python lists of floats, ~22 bytes per body byte (a 3.7 MB body of pixels
        # peaked at 82 MB): charged to the decode budget like a decoded image, off the event loop.
        return await run_charged(
            state.decode_budget,
            len(body) * JSON_BYTES_PER_BODY_BYTE,
            state.limits.request_timeout_s,
            state.limits.retry_after_s,
            _parse_json,
            body,
            batch,
            single,
        )
    if media_type == "multipart/form-data":
        return await _read_files(request, "files" if batch else "file", MAX_BATCH if batch else 1)
    raise HTTPError(
        415,
        "unsupported_media_type",
        f"send application/json or multipart/form-data, not {media_type}"
        if media_type
        else "send application/json or multipart/form-data: the request has no Content-Type",
    )


async def _read_files(request: Request, field: str, max_files: int) -> list[Item]:
    try:
        form = await request.form(max_files=max_files, max_fields=16)
    except (HTTPException, MultiPartException) as exc:
        detail = getattr(exc, "detail", None) or getattr(exc, "message", "")
        raise HTTPError(422, "invalid_input", f"malformed multipart body: {detail}") from None
    try:
        extra = sorted({key for key in form if key != field})
        if extra:  # as the schema says (additionalProperties: false), and as JSON bodies are checked
            names = ", ".join(repr(k[:40]) for k in extra[:3])
            raise HTTPError(422, "invalid_input", f"multipart body has fields other than {field!r}: {names}")
        uploads = form.getlist(field)
        if not uploads:
            raise HTTPError(422, "invalid_input", f"multipart body needs a file field named {field!r}")
        items = []
        for i, upload in enumerate(uploads):
            label = f"files[{i}]" if max_files > 1 else "image"
            if not isinstance(upload, UploadFile):
                raise HTTPError(422, "invalid_input", f"{label}: field {field!r} must be a file upload")
            items.append(Item(data=await upload.read(), label=label))
        return items
    finally:
        await form.close()


def _to_response(pred: Prediction, info: ModelInfo) -> PredictResponse:
    return PredictResponse.model_construct(
        digit=pred.digit,
        confidence=round(float(pred.confidence), 6),
        probabilities=np.round(np.asarray(pred.probabilities, dtype=np.float64), 6).tolist(),
        unsure=bool(pred.unsure),
        status=pred.status,
        empty=bool(pred.empty),
        model=info,
        image=np.round(np.asarray(pred.image, dtype=np.float64), 4).tolist(),  # (28, 28)
    )


async def _run(
    predictor: Predictor, state: ServeState, items: list[Item], batcher: MicroBatcher
) -> tuple[list[Prediction], ModelInfo]:
    preds = await predict_items(predictor, state, items, batcher)
    state.metrics.observe_predictions(preds)
    return preds, state.model_info or ModelInfo(name=str(predictor.name), version=str(predictor.version))


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=body_doc(PredictRequest, "file", many=False),
    summary="Classify one image (JSON pixels, JSON base64 image, or multipart `file`)",
)
async def predict(
    request: Request,
    predictor: Predictor = Depends(get_predictor),
    state: ServeState = Depends(get_state),
    batcher: MicroBatcher = Depends(get_batcher),
) -> Response:
    items = await read_items(request, batch=False, state=state)
    preds, info = await _run(predictor, state, items, batcher)
    return Response(_to_response(preds[0], info).model_dump_json(), media_type="application/json")


@router.post(
    "/v1/predict/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    openapi_extra=body_doc(BatchRequest, "files", many=True),
    summary=f"Classify up to {MAX_BATCH} images (JSON `items`, or multipart repeated `files`)",
)
async def predict_batch(
    request: Request,
    predictor: Predictor = Depends(get_predictor),
    state: ServeState = Depends(get_state),
    batcher: MicroBatcher = Depends(get_batcher),
) -> Response:
    items = await read_items(request, batch=True, state=state)
    if len(items) > MAX_BATCH:  # multipart: the parser stops at MAX_BATCH files, JSON at max_length
        raise HTTPError(422, "invalid_input", f"at most {MAX_BATCH} images per batch, got {len(items)}")
    preds, info = await _run(predictor, state, items, batcher)
    body = BatchResponse.model_construct(model=info, predictions=[_to_response(p, info) for p in preds])
    return Response(body.model_dump_json(), media_type="application/json")
