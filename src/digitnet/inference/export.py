"""ONNX export: the same function of the raw pixels as the checkpoint, runnable without torch.

A digit model: input `x` float32 (B, 1, 28, 28) in [0, 1] (dynamic batch), output `logits`
(B, 10). A reader: input `x` (B, 1, 32, W), W any multiple of 4 (dynamic), output `logits`
(B, 12, W/stride). The MNIST normalisation is inside the graph. Calibration travels as ONNX
`metadata_props` (`digitnet.temperature`, `digitnet.unsure_threshold`, `digitnet.model`,
`digitnet.version`, `digitnet.views`: the test-time augmentation copies of each image the graph
runs; `digitnet.stride` for a reader; `digitnet.precision` "int8" for a reader's int8 export,
`quantize.quantize_reader`), so the ONNX backends of `Predictor` and `Reader` need nothing but the
.onnx file.

Integrity: a hash written inside the file cannot vouch for the file (zero one initializer and the
metadata still reads fine). So `export_onnx` also records the file's own SHA-256 beside it, in
`model.onnx.sha256` (the `sha256sum` format, `sha256sum -c` checks it), and `verify_onnx` is what
every loader asks before trusting an export: the bytes must hash to the record.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitnet.checkpoint import (
    LoadedModel,
    checkpoint_version,
    file_sha256,
    load_checkpoint,
    resolve_model_path,
)
from digitnet.errors import ConfigError, ModelError
from digitnet.inference.folding import fold_for_inference
from digitnet.inference.lines import MAX_STRIP_W, STRIP_H
from digitnet.models import get_spec
from digitnet.networks import READER_STRIDE, UPSAMPLES, frame_stride, views_per_image
from digitnet.utils import atomic_write_bytes, first_line

OPSET = 18


def onnx_module() -> Any:
    """The `onnx` package, imported on first use: it takes 0.6 s of the predictor's 1.7 s import
    time (`python -X importtime`), and only exports and .onnx files need it."""
    import onnx

    return onnx


FORMAT = "digitnet-onnx/1"
INPUT, OUTPUT = "x", "logits"
MAX_VIEWS = 25  # test-time augmentation copies per image: tta=2 at most (networks.CNN)
PRECISIONS = ("float32", "int8")  # int8: a reader's int8 export (`quantize`)


def onnx_bytes(
    loaded: LoadedModel, *, opset: int = OPSET, int8_strips: Sequence[np.ndarray] | None = None
) -> bytes:
    """Serialized ONNX model (with metadata) for a `checkpoint.LoadedModel`: a digit model or a
    reader; with `int8_strips`, a reader's int8 graph (`quantize.quantize_reader`), its activation
    ranges measured on those (32, W) strips."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    reads_numbers = get_spec(loaded.name).task == "numbers"
    if reads_numbers:  # ONNX Runtime folds each BatchNorm into its conv itself
        model = loaded.model.float().eval()
        example = torch.zeros(2, 1, STRIP_H, 160)
        frames = torch.export.Dim("frames", min=1, max=MAX_STRIP_W // READER_STRIDE)
        shapes: tuple[dict[int, Any], ...] = ({0: batch, 3: READER_STRIDE * frames},)  # W: whole frames
    else:
        model = fold_for_inference(loaded.model.float().eval())  # BN folded: ORT fuses Conv+ReLU
        example = torch.zeros(2, 1, 28, 28)
        shapes = ({0: batch},)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # exporter deprecation chatter, not the user's concern
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:
        raise ModelError(f"ONNX export of {loaded.name!r} failed: {first_line(exc)}") from None
    finally:
        quiet.setLevel(level)
    if program is None:  # the dynamo exporter always returns a program; older ones may not
        raise ModelError(f"ONNX export of {loaded.name!r} produced no program")
    proto = program.model_proto
    if int8_strips is not None:
        # Imported here: onnxruntime.quantization takes 0.65 s to import (on top of onnxruntime),
        # and only int8 exports need it, not the predictor that imports this module.
        from digitnet.inference.quantize import quantize_reader

        int8 = quantize_reader(proto.SerializeToString(), int8_strips, INPUT)
        proto = onnx_module().load_model_from_string(int8)
    meta = {
        "digitnet.format": FORMAT,
        "digitnet.model": loaded.name,
        "digitnet.temperature": repr(float(loaded.temperature)),
        "digitnet.unsure_threshold": repr(float(loaded.unsure_threshold)),
        "digitnet.not_digit_threshold": repr(float(loaded.not_digit_threshold)),
        "digitnet.version": checkpoint_version(loaded),
        "digitnet.views": str(views_per_image(loaded.model)),  # test-time augmentation copies per image
    }
    if reads_numbers:
        meta["digitnet.stride"] = str(getattr(loaded.model, "stride", READER_STRIDE))
    if int8_strips is not None:
        meta["digitnet.precision"] = "int8"  # absent: float32
    if loaded.path is not None:  # lets `Predictor.load(backend="auto")` spot a stale export
        meta["digitnet.checkpoint_sha256"] = file_sha256(loaded.path)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx_module().checker.check_model(proto)
    return proto.SerializeToString()


def read_metadata(data: bytes, source: str = "model") -> dict[str, Any]:
    """digitnet's metadata from serialized ONNX: model, version, temperature, unsure_threshold,
    not_digit_threshold, views, stride (a reader's strip columns per frame), checkpoint_sha256,
    precision ("float32", or "int8" for a reader's int8 export)."""
    try:
        proto = onnx_module().load_model_from_string(data)
    except Exception:
        raise ModelError(f"{source}: not a readable ONNX model") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("digitnet.format") != FORMAT:
        raise ModelError(
            f"{source}: not a digitnet ONNX export (no {FORMAT} metadata); "
            "re-export it with `digitnet export`"
        )
    try:
        views = int(props.get("digitnet.views", "1"))
    except ValueError:
        views = 0
    strides = {str(frame_stride(u)): frame_stride(u) for u in UPSAMPLES}
    given = props.get("digitnet.stride", str(READER_STRIDE))
    stride = strides.get(given, 0)
    if not stride:
        raise ModelError(f"{source}: digitnet.stride must be one of {', '.join(strides)}, got {given!r}")
    precision = props.get("digitnet.precision", "float32")
    if precision not in PRECISIONS:
        raise ModelError(
            f"{source}: digitnet.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    if not 1 <= views <= MAX_VIEWS:
        raise ModelError(
            f"{source}: digitnet.views must be 1 to {MAX_VIEWS}, got {props.get('digitnet.views')!r}"
        )
    try:
        return {
            "model": props["digitnet.model"],
            "version": props.get("digitnet.version", "unknown"),
            "temperature": float(props["digitnet.temperature"]),
            "unsure_threshold": float(props["digitnet.unsure_threshold"]),
            "not_digit_threshold": float(props.get("digitnet.not_digit_threshold", "0.0")),
            "views": views,
            "stride": stride,
            "checkpoint_sha256": props.get("digitnet.checkpoint_sha256"),
            "precision": precision,
        }
    except (KeyError, ValueError):
        raise ModelError(f"{source}: digitnet ONNX metadata is incomplete; re-export it") from None


def record_path(onnx_file: Path) -> Path:
    """Where the SHA-256 of `onnx_file` is recorded: `model.onnx` → `model.onnx.sha256`."""
    return onnx_file.with_name(onnx_file.name + ".sha256")


def write_record(onnx_file: Path, data: bytes) -> None:
    atomic_write_bytes(
        record_path(onnx_file), f"{hashlib.sha256(data).hexdigest()}  {onnx_file.name}\n".encode()
    )


def verify_onnx(onnx_file: Path) -> tuple[bytes, str | None]:
    """The file's bytes, and None if they hash to the recorded SHA-256, else the one-line reason not
    to trust them. The bytes returned are the ones hashed: the caller loads exactly what was checked."""
    try:
        data = onnx_file.read_bytes()
    except OSError as exc:
        return b"", f"{onnx_file}: cannot read ({exc.strerror or exc})"
    record = record_path(onnx_file)
    try:
        recorded = record.read_text().split()[0].lower() if record.is_file() else ""
    except (OSError, UnicodeDecodeError, IndexError):
        recorded = ""
    if not recorded:
        return data, f"{onnx_file}: no recorded SHA-256 ({record.name}); re-export it with `digitnet export`"
    if hashlib.sha256(data).hexdigest() != recorded:
        return data, (
            f"{onnx_file}: SHA-256 does not match the one recorded at export ({record.name}): "
            "the file was modified or damaged; re-export it with `digitnet export`"
        )
    return data, None


def check_int8(model_name: str) -> None:
    """int8 exports are for readers, whose convolutions over a line are most of its reading time."""
    if get_spec(model_name).task != "numbers":
        raise ConfigError(
            f"int8 export is for readers; {model_name!r} reads one digit (export it as float32)"
        )


def export_onnx(
    model_spec: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = OPSET,
    int8_strips: Sequence[np.ndarray] | None = None,
) -> Path:
    """Export a run folder / model file / "default" to ONNX; default `out` is model.onnx beside it.

    `int8_strips`: a reader's int8 export instead (`quantize.quantize_reader`), its activation
    ranges measured on these (32, W) strips (`training.int8.int8_calibration` makes them).

    Written atomically (temp file + rename), so a reader never sees a half-written model; then its
    SHA-256 is recorded beside it (`record_path`), which loaders check before trusting the file.
    """
    loaded = load_checkpoint(model_spec)
    target = (
        Path(out).expanduser() if out is not None else resolve_model_path(model_spec).with_suffix(".onnx")
    )
    if target.is_dir():
        target = target / "model.onnx"
    if int8_strips is not None:  # refused before the export's seconds of work
        check_int8(loaded.name)
        if not int8_strips:
            raise ConfigError("int8 export: no calibration strips")
    data = onnx_bytes(loaded, opset=opset, int8_strips=int8_strips)
    try:
        atomic_write_bytes(target, data)
        write_record(target, data)
    except OSError as exc:
        raise ModelError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
