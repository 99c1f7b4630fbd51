"""One path for a prediction: `Predictor`, over a torch module or an ONNX Runtime session.

Probabilities are calibrated (`calibration.softmax(logits / temperature)`) and every answer says
what it is (`Prediction.status`): "empty" (no ink: reported, never classified), "not_a_digit"
(a model trained with outlier exposure spreads its belief over all ten digits for what is not one:
confidence under `not_digit_threshold`), "unsure" (under `unsure_threshold`) or "digit".
Loading is one trip downward: `checkpoint.load_checkpoint` for the weights, then either
`folding.fast_module` (torch) or `onnx_session` (ONNX Runtime).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

from digitnet.checkpoint import checkpoint_version, file_sha256, load_checkpoint, resolve_model_path
from digitnet.errors import ConfigError, DigitnetWarning, ModelError
from digitnet.inference.batching import as_batch_array
from digitnet.inference.calibration import softmax
from digitnet.inference.export import onnx_bytes, read_metadata, verify_onnx
from digitnet.inference.folding import fast_module
from digitnet.inference.preprocess import MIN_CONTRAST, as_mnist, decode_image, preprocess
from digitnet.networks import views_per_image
from digitnet.utils import first_line

BACKENDS = ("auto", "torch", "onnx")
READER = "reader"  # the registry's model that reads numbers, not one digit
READS_NUMBERS = "a 'reader' model reads whole numbers, not one digit: use `digitnet read`"
ONE_DIGIT = "a {name!r} model reads one digit, not numbers: give a `reader` run (`train --model reader`)"
CHUNK = 4096  # images per model call: bounds memory for huge inputs

RunLogits = Callable[[np.ndarray], np.ndarray]  # float32 (N, 1, 28, 28) in [0, 1] → logits (N, 10)
# (a reader: (N, 1, 32, W) → (N, 12, W / stride))


STATUSES = ("digit", "unsure", "not_a_digit", "empty")


@dataclass(frozen=True)
class Prediction:
    digit: int | None  # the most likely digit; None when the image is empty
    confidence: float  # calibrated probability of `digit` (0.0 when empty)
    probabilities: list[float]  # 10 calibrated probabilities (all 0.0 when empty)
    unsure: bool  # not a confident digit: status is anything but "digit" (kept for compatibility)
    empty: bool  # no ink found
    image: np.ndarray = field(repr=False)  # (28, 28) float32: what the model saw
    status: str = "digit"  # one of STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "digit": self.digit,
            "confidence": self.confidence,
            "probabilities": list(self.probabilities),
            "unsure": self.unsure,
            "empty": self.empty,
            "status": self.status,
        }


def onnx_session(data: bytes, source: str, threads: int | None = None) -> ort.InferenceSession:
    """The one ONNX Runtime session builder: CPU, full graph optimisation, `threads` intra-op
    threads (None = one per core)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0  # 0 = ONNX Runtime's default (one per core)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{source}: ONNX Runtime cannot load it ({first_line(exc)})") from None


def torch_logits(net: nn.Module) -> RunLogits:
    """`RunLogits` over an eval-mode torch module, without autograd."""

    def run_logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            xb = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)  # (N, 1, 28, 28)
            return net(xb).float().numpy()

    return run_logits


class Predictor:
    """Calibrated digit predictions from a run folder, a model file, or the bundled "default"."""

    def __init__(
        self,
        *,
        run_logits: RunLogits,
        name: str,
        version: str,
        temperature: float,
        unsure_threshold: float,
        backend: str,
        not_digit_threshold: float = 0.0,
        source: str = "",
        views: int = 1,
    ) -> None:
        self._run_logits = run_logits
        self._chunk = max(1, CHUNK // max(1, int(views)))  # a TTA model runs `views` copies of each image
        self.name, self.version, self.backend, self.source = name, version, backend, source
        self.temperature, self.unsure_threshold = float(temperature), float(unsure_threshold)
        self.not_digit_threshold = float(not_digit_threshold)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ModelError(f"model {name!r}: temperature must be a positive number, got {temperature}")

    @classmethod
    def from_module(
        cls,
        net: nn.Module,
        *,
        name: str,
        version: str,
        temperature: float,
        unsure_threshold: float,
        not_digit_threshold: float = 0.0,
        source: str = "",
    ) -> Predictor:
        """A torch-backend predictor over an in-memory network (e.g. a just-fitted one)."""
        net = net.eval()
        return cls(
            run_logits=torch_logits(net),
            name=name,
            version=version,
            temperature=temperature,
            unsure_threshold=unsure_threshold,
            not_digit_threshold=not_digit_threshold,
            backend="torch",
            source=source,
            views=views_per_image(net),
        )

    @classmethod
    def load(
        cls, model: str | Path = "default", backend: str = "auto", threads: int | None = None
    ) -> Predictor:
        """backend: "torch", "onnx" (ONNX Runtime), or "auto" = onnx when `model` is an .onnx file or
        an export of this very checkpoint sits beside it as model.onnx, else torch. ONNX Runtime is
        the faster of the two on CPU (see BENCHMARKS.md)."""
        if threads is not None and threads < 1:
            raise ConfigError("threads must be >= 1")
        backend, onnx_file, data = choose_backend(model, backend)
        if backend == "onnx":
            return cls._load_onnx(model, onnx_file, data, threads)
        return cls._load_torch(model, threads)

    @classmethod
    def _load_torch(cls, model: str | Path, threads: int | None) -> Predictor:
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        loaded = load_checkpoint(model)
        check_kind(loaded.name, str(loaded.path), reads_numbers=False)
        return cls(
            run_logits=torch_logits(fast_module(loaded.model.eval())),
            name=loaded.name,
            version=checkpoint_version(loaded),
            temperature=loaded.temperature,
            unsure_threshold=loaded.unsure_threshold,
            not_digit_threshold=loaded.not_digit_threshold,
            backend="torch",
            source=str(loaded.path),
            views=views_per_image(loaded.model),
        )

    @classmethod
    def _load_onnx(
        cls, model: str | Path, onnx_file: Path | None, verified: bytes, threads: int | None
    ) -> Predictor:
        run_logits, meta, source = onnx_runner(model, onnx_file, verified, threads, reads_numbers=False)
        return cls(
            run_logits=run_logits,
            name=meta["model"],
            version=meta["version"],
            temperature=meta["temperature"],
            unsure_threshold=meta["unsure_threshold"],
            not_digit_threshold=meta["not_digit_threshold"],
            backend="onnx",
            source=source,
            views=meta["views"],
        )

    # -- arrays ------------------------------------------------------------------------------
    def logits(self, x: Any) -> np.ndarray:
        """Raw logits (N, 10) float32 for anything `batching.as_batch_array` accepts."""
        return self._logits_checked(as_batch_array(x))

    def _logits_checked(self, xb: np.ndarray) -> np.ndarray:
        """Logits for float32 (N, 1, 28, 28) in [0, 1] that `as_batch_array` already validated."""
        step = self._chunk
        if len(xb) <= step:
            return np.asarray(self._run_logits(xb), dtype=np.float32)
        return np.concatenate([self._run_logits(xb[i : i + step]) for i in range(0, len(xb), step)])

    def predict_proba(self, x: Any) -> np.ndarray:
        """Calibrated probabilities (N, 10) float32 = softmax(logits / temperature)."""
        return softmax(self.logits(x), self.temperature)

    def predict(self, x: Any) -> np.ndarray:
        """Predicted digits (N,) int64."""
        return self.logits(x).argmax(axis=1).astype(np.int64)

    def predict_arrays(self, images: np.ndarray, *, empty: list[bool] | None = None) -> list[Prediction]:
        """Predictions for images already in MNIST form, (N, 28, 28) uint8 or float [0, 1]."""
        xb4 = as_batch_array(images)  # (N, 1, 28, 28), validated once
        empty = list(empty) if empty is not None else [False] * len(xb4)
        live = [i for i, e in enumerate(empty) if not e]
        outputs = self._logits_checked(xb4[live]) if live else np.zeros((0, 10), np.float32)
        return self.predictions_from_outputs(xb4[:, 0], outputs, empty=empty)

    # The two halves of `predict_arrays`, for callers that batch model calls across requests
    # (the server's micro-batcher): `model_outputs` is the batched array function, rows in = rows
    # out; `predictions_from_outputs` turns a caller's own rows back into `Prediction`s.
    def model_outputs(self, x: Any) -> np.ndarray:
        """The model's raw outputs for a batch: logits (N, 10) float32 (see `logits`)."""
        return self.logits(x)

    def predictions_from_outputs(
        self, images: np.ndarray, outputs: np.ndarray, *, empty: list[bool]
    ) -> list[Prediction]:
        """`Prediction`s for images (N, 28, 28) in [0, 1] (what the model saw), given `outputs` of
        `model_outputs` for the non-empty ones only, in order."""
        live = [i for i, e in enumerate(empty) if not e]
        if len(outputs) != len(live) or len(empty) != len(images):
            raise ValueError(
                f"{len(outputs)} model outputs for {len(live)} non-empty of {len(images)} images"
            )
        probs = softmax(np.asarray(outputs, np.float32), self.temperature) if live else outputs
        out: list[Prediction] = []
        rows = iter(probs)
        for i, is_empty in enumerate(empty):
            if is_empty:
                out.append(Prediction(None, 0.0, [0.0] * 10, True, True, images[i], "empty"))
                continue
            p = next(rows)
            digit = int(p.argmax())
            conf = float(p[digit])
            status = self.status(conf)
            out.append(
                Prediction(digit, conf, [float(v) for v in p], status != "digit", False, images[i], status)
            )
        return out

    def status(self, confidence: float) -> str:
        """What an image with this calibrated confidence is: not_a_digit, unsure or digit."""
        if confidence < self.not_digit_threshold:
            return "not_a_digit"
        return "unsure" if confidence < self.unsure_threshold else "digit"

    def predict_images(
        self, images: Sequence[Image.Image | np.ndarray], *, preprocess: bool = True
    ) -> list[Prediction]:
        """Images (PIL or arrays, any size) → predictions, all in one batched model call."""
        if not images:
            return []
        if preprocess:
            done = [_preprocess(img) for img in images]
            fields, empty = [p.image for p in done], [p.empty for p in done]
        else:
            fields = [as_mnist(img) for img in images]
            empty = [float(f.max()) < MIN_CONTRAST for f in fields]
        return self.predict_arrays(np.stack(fields), empty=empty)

    def predict_file(self, path: str | Path, *, preprocess: bool = True) -> Prediction:
        return self.predict_images([decode_image(path)], preprocess=preprocess)[0]

    def __repr__(self) -> str:
        return (
            f"Predictor(name={self.name!r}, version={self.version!r}, backend={self.backend!r}, "
            f"temperature={self.temperature:.4g}, unsure_threshold={self.unsure_threshold:.4g})"
        )


_preprocess = preprocess  # `predict_images`' keyword `preprocess` shadows the function inside it


def choose_backend(model: str | Path, backend: str) -> tuple[str, Path | None, bytes]:
    """("torch" | "onnx", the trusted export to run or None, its verified bytes) for `model` (a
    run folder, model file, .onnx file or a bundled model's path): the one backend rule of the
    `Predictor` and the `Reader`. "auto" = onnx when `model` is an .onnx file or an export of this
    very checkpoint sits beside it, else torch (with a one-line warning when an export is there
    but cannot be trusted). ONNX Runtime is the faster of the two on CPU (BENCHMARKS.md)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    onnx_file, data, problem = _onnx_beside(model)
    if problem is not None and str(model).endswith(".onnx"):
        raise ModelError(problem)  # the file named is the model: nothing to fall back to
    if backend == "auto":
        if problem is not None:  # an export is there but cannot be trusted: say so, use torch
            warnings.warn(f"{problem}; using the torch backend instead", DigitnetWarning, stacklevel=3)
        backend = "onnx" if onnx_file is not None and problem is None else "torch"
    if backend == "onnx" and problem is not None:
        raise ModelError(problem)
    if backend == "torch" and str(model).endswith(".onnx"):
        raise ModelError(f"{model}: an .onnx file runs only with backend 'onnx'")
    return backend, onnx_file, data


def check_kind(name: str, source: str, *, reads_numbers: bool) -> None:
    """A `reader` reads whole numbers, every other model one digit: refuse the other kind."""
    if (name == READER) != reads_numbers:
        raise ModelError(f"{source}: " + (ONE_DIGIT.format(name=name) if reads_numbers else READS_NUMBERS))


def onnx_runner(
    model: str | Path, onnx_file: Path | None, verified: bytes, threads: int | None, *, reads_numbers: bool
) -> tuple[RunLogits, dict[str, Any], str]:
    """The onnx backend `choose_backend` chose: (run_logits, the export's metadata, its source). It
    runs the trusted file found beside the checkpoint or, with none there, an export made in memory
    (a few seconds, once); the model must be of the kind asked for, checked before any export."""
    if onnx_file is not None:
        data, source = verified, str(onnx_file)
    else:
        loaded = load_checkpoint(model)
        check_kind(loaded.name, str(loaded.path), reads_numbers=reads_numbers)
        data, source = onnx_bytes(loaded), str(loaded.path)
    meta = read_metadata(data, source)
    check_kind(meta["model"], source, reads_numbers=reads_numbers)
    session = onnx_session(data, source, threads)
    input_name = session.get_inputs()[0].name

    def run_logits(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: x})[0])

    return run_logits, meta, source


def _onnx_beside(model: str | Path) -> tuple[Path | None, bytes, str | None]:
    """The ONNX export to use for `model`: (file, its verified bytes, None), or (None, b"", None)
    when there is none to use, or (file, b"", reason) when one is there but cannot be trusted.

    An .onnx file given directly must match its recorded SHA-256 when it has a record. The export
    beside a checkpoint (model.pt → model.onnx) must match its record (`export.verify_onnx`) and name
    this very checkpoint in its metadata; one made from an older checkpoint (stale) is not used.
    """
    if str(model).endswith(".onnx"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelError(f"no ONNX model at {model}")
        data, problem = verify_onnx(path)
        if problem is not None and "no recorded SHA-256" in problem:
            return path, data, None  # a file the user names, exported elsewhere: theirs to vouch for
        return path, data, problem
    pt = resolve_model_path(model)
    onnx = pt.with_suffix(".onnx")
    if not onnx.is_file():
        return None, b"", None
    data, problem = verify_onnx(onnx)
    if problem is not None:
        return onnx, b"", problem
    try:
        meta = read_metadata(data, str(onnx))
    except ModelError as exc:
        return onnx, b"", str(exc)
    if meta.get("checkpoint_sha256") != file_sha256(pt):
        return None, b"", None  # stale: exported from an earlier checkpoint; never used
    return onnx, data, None
