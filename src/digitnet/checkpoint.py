"""The one loader of trained models.

A trained model is a run folder; everything that consumes a model (evaluate, predict, export,
serve, `DigitClassifier.load`) goes through `load_checkpoint`, which reads `model.pt` with
`weights_only=True` (no pickled code can run) and rebuilds the architecture from the registry
name and kwargs stored beside the weights. A model's identity (`checkpoint_version`, the file's
SHA-256) is defined here too, so the predictor and the exporter ask one place.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from digitnet.errors import ModelError
from digitnet.models import build_model, get_spec, saved_network_kwargs
from digitnet.utils import atomic_write_bytes, first_line

FORMAT = "digitnet-checkpoint/1"
MAX_CHECKPOINT_BYTES = 512 * 1024 * 1024
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # eval mode, float32, CPU
    name: str  # registry name, e.g. "cnn"
    model_kwargs: dict[str, Any]  # every constructor argument (models.saved_network_kwargs)
    config: dict[str, Any]  # the TrainConfig the run used, as a dict
    temperature: float = 1.0  # calibration: probabilities = softmax(logits / temperature)
    unsure_threshold: float = 0.0  # calibrated confidence below this is flagged "unsure"
    not_digit_threshold: float = 0.0  # ... and below this "not_a_digit" (models trained with outliers)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively: keeps the checkpoint to types weights_only accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def checkpoint_bytes(
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: dict | None = None,
    config: dict | None = None,
    temperature: float = 1.0,
    unsure_threshold: float = 0.0,
    not_digit_threshold: float = 0.0,
    meta: dict | None = None,
    extra: dict | None = None,
) -> bytes:
    payload = {
        "format": FORMAT,
        "model": model_name,
        "model_kwargs": _plain(model_kwargs or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": _plain(config or {}),
        "temperature": float(temperature),
        "unsure_threshold": float(unsure_threshold),
        "not_digit_threshold": float(not_digit_threshold),
        "meta": _plain(meta or {}),
        **(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(path: str | Path, model: nn.Module, **kwargs: Any) -> None:
    """Write `model.pt` atomically (see `checkpoint_bytes` for the keyword arguments)."""
    atomic_write_bytes(path, checkpoint_bytes(model, **kwargs))


def resolve_model_path(spec: str | Path) -> Path:
    """'default' → the bundled pretrained model; a run folder → its model.pt; a file → itself."""
    if str(spec) == "default":
        path = PRETRAINED_DIR / "model.pt"
        if not path.is_file():
            raise ModelError(
                "the bundled pretrained model is missing from this install (digitnet/pretrained/model.pt)"
            )
        return path
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise ModelError(f"no model at {spec}: expected a run folder with model.pt, a .pt file, or 'default'")
    return path


def read_checkpoint(spec: str | Path) -> tuple[dict[str, Any], Path]:
    """The raw checkpoint dict, read safely, plus the file it came from."""
    path = resolve_model_path(spec)
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise ModelError(f"{path}: {size:,} bytes is larger than any digitnet checkpoint; refusing to load")
    try:
        with warnings.catch_warnings():  # torch warns about a raw pickle's protocol before refusing it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's message suggests weights_only=False, i.e. running the file's code: never say that.
        raise ModelError(
            f"{path}: not a readable digitnet checkpoint (not tensors and plain data; "
            "digitnet never runs code from a model file)"
        ) from None
    except Exception as exc:  # corrupt zip, truncated file …
        raise ModelError(f"{path}: not a readable digitnet checkpoint ({_torch_reason(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(f"{path}: not a digitnet checkpoint (format {found!r})")
    return ckpt, path


def _torch_reason(exc: BaseException) -> str:
    """PyTorch's first line, without any advice to load with weights_only=False."""
    line = first_line(exc)
    return "unreadable" if "weights_only" in line or "Weights only" in line else line


def load_checkpoint(spec: str | Path) -> LoadedModel:
    """Load a run folder, a `model.pt` file, or 'default' into an eval-mode float32 CPU model."""
    ckpt, path = read_checkpoint(spec)
    name = str(ckpt.get("model"))
    try:
        get_spec(name)
        kwargs = saved_network_kwargs(name, dict(ckpt.get("model_kwargs", {})))
        model = build_model(name, **kwargs)
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:
        raise ModelError(f"{path}: checkpoint does not match model {name!r}: {first_line(exc)}") from None
    model.float().eval()
    return LoadedModel(
        model=model,
        name=name,
        model_kwargs=kwargs,
        config=dict(ckpt.get("config", {})),
        temperature=float(ckpt.get("temperature", 1.0)),
        unsure_threshold=float(ckpt.get("unsure_threshold", 0.0)),
        not_digit_threshold=float(ckpt.get("not_digit_threshold", 0.0)),
        meta=dict(ckpt.get("meta", {})),
        path=path,
    )


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_version(loaded: LoadedModel) -> str:
    """A short, stable name for these weights: `meta["version"]` if the run set one, else the
    first 12 hex digits of the checkpoint file's SHA-256 ("unknown" without a file)."""
    v = loaded.meta.get("version")
    if v:
        return str(v)
    return file_sha256(loaded.path)[:12] if loaded.path else "unknown"
