"""Request and response models of the HTTP API (they are also what /docs shows).

Pixel convention for JSON `pixels`: MNIST form, a light digit on a dark background (0 = background),
28×28 nested rows or 784 numbers in row-major order. Scale: `"0-255"`, `"0-1"`, or `"auto"` (the
default), where auto means 0–255 if any value is above 1, else 0–1. Every value must be a finite
JSON number (strings, booleans, NaN and infinities are refused) in [0, 255] (or [0, 1] for "0-1").
Pixels are fed to the model as they are unless `preprocess` is true, in which case they go through
the same pipeline as an uploaded photo (polarity, crop, centring by mass).

`/v1/read` (`ReadRequest`) takes any H×W rows of equal length instead, ink of either polarity
(its ink is found as a photo's is), with the same scales and value rules.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from digitnet.errors import InputError

MAX_BATCH = 256

# strict: "1" and true are not numbers; allow_inf_nan=False: the NaN/Infinity JSON extensions are refused.
Pixel = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class _OneImage(BaseModel):
    """What every one-image request checks: exactly one of `pixels` or `image_base64`, and no
    field given as an explicit null (absent is allowed; the schema says so)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in cls.model_fields:
                if key in data and data[key] is None:
                    raise ValueError(f"{key!r} must not be null; leave it out instead")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (getattr(self, "pixels", None) is None) == (getattr(self, "image_base64", None) is None):
            raise ValueError("give exactly one of 'pixels' or 'image_base64'")
        return self


class PredictRequest(_OneImage):
    """One image: exactly one of `pixels` or `image_base64`."""

    pixels: list[Pixel] | list[list[Pixel]] | None = Field(
        default=None, description="28×28 rows or 784 numbers, light digit on dark background (MNIST form)"
    )
    image_base64: str | None = Field(
        default=None, description="a PNG/JPEG/GIF/BMP/WebP file, base64 (a data: URL prefix is allowed)"
    )
    scale: Literal["auto", "0-255", "0-1"] = Field(
        default="auto", description="pixel scale; auto = 0-255 if any value is above 1, else 0-1"
    )
    preprocess: bool = Field(
        default=False, strict=True, description="run pixels through the photo pipeline (images always are)"
    )


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[PredictRequest] = Field(
        min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} images"
    )


class ModelInfo(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    digit: int | None = Field(description="the predicted digit, or null for an empty canvas")
    confidence: float = Field(description="calibrated probability of `digit`")
    probabilities: list[float] = Field(description="10 calibrated probabilities, digits 0-9")
    unsure: bool = Field(description='not a confident digit: `status` is anything but "digit"')
    empty: bool = Field(description="the image had no ink")
    status: Literal["digit", "unsure", "not_a_digit", "empty"] = Field(
        description="what the image is: a digit; unsure which digit; not a digit at all; or empty"
    )
    model: ModelInfo
    image: list[list[float]] = Field(description="the 28×28 image the model saw, 0-1, light on dark")


class BatchResponse(BaseModel):
    model: ModelInfo
    predictions: list[PredictResponse]


MAX_READ_PIXELS = 4_000_000  # JSON pixels for /v1/read: the body cap (4 MB) keeps them well under it


class ReadRequest(_OneImage):
    """One image of a number: exactly one of `pixels` (any H×W rows) or `image_base64`."""

    pixels: list[list[Pixel]] | None = Field(
        default=None,
        description="H×W rows of numbers, ink of either polarity (light on dark, or dark on light)",
    )
    image_base64: str | None = Field(
        default=None, description="a PNG/JPEG/GIF/BMP/WebP file, base64 (a data: URL prefix is allowed)"
    )
    scale: Literal["auto", "0-255", "0-1"] = Field(
        default="auto", description="pixel scale; auto = 0-255 if any value is above 1, else 0-1"
    )


class ReadDigit(BaseModel):
    digit: int
    confidence: float = Field(
        description="the reader's probability of this digit; for digits that stand apart, the reader's "
        "and the digit classifier's beliefs multiplied and renormalised over the ten digits"
    )
    box: list[int] = Field(description="[x0, y0, x1, y1] in the input image's pixels")
    image: list[list[float]] = Field(
        description="this digit as the digit classifier sees it, 28×28, 0-1, light on dark"
    )


class ReadResponse(BaseModel):
    number: str = Field(description='the digits read, left to right; "" when the image holds none')
    confidence: float = Field(
        description="calibrated probability that the whole number is right (the reader's probability of "
        "the string; where the classifier overruled the reader on a digit, low: the two disagreed)"
    )
    unsure: bool = Field(description="confidence is below the reader's calibrated threshold")
    digits: list[ReadDigit]
    marks: list[list[int]] = Field(description="boxes of glyphs that are not digits (letters, signs, dashes)")
    model: ModelInfo


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: ModelInfo | None = None


def pixels_to_array(req: PredictRequest | ReadRequest) -> np.ndarray:
    """Validated JSON pixels → float32 in [0, 1], or InputError naming the problem: `(28, 28)` for
    a prediction, any `(H, W)` rows for a reading. The one check of JSON pixels."""
    px: list[Any] = list(req.pixels or [])
    if isinstance(req, ReadRequest):
        widths = sorted({len(row) for row in px})
        if not px or len(widths) != 1 or widths[0] == 0:
            raise InputError(
                f"pixels must be H×W rows of equal length, got {len(px)} rows "
                f"of length {'/'.join(map(str, widths[:5])) or '0'}"
            )
        if len(px) * widths[0] > MAX_READ_PIXELS:
            raise InputError(f"pixels: {len(px)}×{widths[0]} is over the {MAX_READ_PIXELS:,}-pixel limit")
        arr = np.asarray(px, dtype=np.float64)
    elif px and isinstance(px[0], list):
        widths = sorted({len(row) for row in px})
        if len(px) != 28 or widths != [28]:
            raise InputError(
                f"pixels must be 28x28 nested rows or 784 numbers, got {len(px)} rows "
                f"of length {'/'.join(map(str, widths))}"
            )
        arr = np.asarray(px, dtype=np.float64)
    elif len(px) != 784:
        raise InputError(f"pixels must be 28x28 nested rows or 784 numbers, got {len(px)} numbers")
    else:
        arr = np.asarray(px, dtype=np.float64).reshape(28, 28)
    # float64 throughout: a pixel of 1e308 is a value to refuse, not a float32 overflow warning
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        raise InputError(f"pixels must not be negative (min {lo:g})")
    if req.scale == "0-1" or (req.scale == "auto" and hi <= 1.0):
        if hi > 1.0:
            raise InputError(f"pixels with scale 0-1 must be at most 1 (max {hi:g})")
        return arr.astype(np.float32)
    if hi > 255:
        raise InputError(f"pixels must be at most 255 (max {hi:g})")
    return (arr / 255.0).astype(np.float32)


def decode_base64(text: str) -> bytes:
    """The bytes of `image_base64`, with an optional `data:<type>;base64,` prefix removed."""
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise InputError("image_base64 data: URL must be base64-encoded")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("image_base64 is not valid base64") from None


# -- the OpenAPI schemas of PredictRequest and ReadRequest, exactly what the server accepts ----------
# Pydantic's own schema cannot say "exactly one of", the allowed lengths, or the 0-1 scale's maximum;
# a schema-driven client (or fuzzer) would then send requests the schema allows and the server
# refuses. This one says all of it; tests/test_schema_fuzz.py holds the two to each other.
BASE64_PATTERN = (
    r"^(data:[^,]*;base64,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$"
)


def _pixels_schema(top: float) -> dict[str, Any]:
    value = {"type": "number", "minimum": 0, "maximum": top}
    return {
        "anyOf": [
            {"type": "array", "items": value, "minItems": 784, "maxItems": 784},
            {
                "type": "array",
                "items": {"type": "array", "items": value, "minItems": 28, "maxItems": 28},
                "minItems": 28,
                "maxItems": 28,
            },
        ]
    }


def _rows_schema(top: float) -> dict[str, Any]:
    value = {"type": "number", "minimum": 0, "maximum": top}
    return {"type": "array", "items": {"type": "array", "items": value, "minItems": 1}, "minItems": 1}


def _exact(model: type[BaseModel], pixels: Callable[[float], dict[str, Any]]) -> dict[str, Any]:
    """`model`'s schema as the server checks it: one of `pixels` (`pixels(top)` for the values'
    maximum, 1 under scale 0-1) or `image_base64`, and every other field with its default."""
    fields = model.model_fields
    props: dict[str, Any] = {
        "pixels": {"description": fields["pixels"].description, **pixels(255)},
        "image_base64": {
            "type": "string",
            "description": fields["image_base64"].description,
            "pattern": BASE64_PATTERN,
        },
        "scale": {
            "type": "string",
            "enum": ["auto", "0-255", "0-1"],
            "default": "auto",
            "description": fields["scale"].description,
        },
    }
    if "preprocess" in fields:
        props["preprocess"] = {
            "type": "boolean",
            "default": False,
            "description": fields["preprocess"].description,
        }
    return {
        "title": model.__name__,
        "description": model.__doc__,
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "oneOf": [{"required": ["pixels"]}, {"required": ["image_base64"]}],
        "if": {"required": ["scale"], "properties": {"scale": {"const": "0-1"}}},
        "then": {"properties": {"pixels": pixels(1)}},
    }


def exact_request_schema(components: dict[str, Any]) -> None:
    """Replace the generated `PredictRequest` and `ReadRequest` schemas in `components` with exact
    ones. A reading's pixels are any H×W rows; JSON Schema cannot say "rows of equal length", so
    that one rule is the server's alone (a ragged request gets a 422 naming the row lengths)."""
    components["PredictRequest"] = _exact(PredictRequest, _pixels_schema)
    components["ReadRequest"] = _exact(ReadRequest, _rows_schema)
