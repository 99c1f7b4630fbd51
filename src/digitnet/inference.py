"""One path for a prediction: `Predictor`, over a torch module or an ONNX Runtime session.

Probabilities are calibrated: `softmax(logits / temperature)`, the temperature fitted on the
validation split at the end of training (`fit_temperature`), and a prediction whose calibrated
confidence is below the run's `unsure_threshold` (`choose_unsure_threshold`) is flagged `unsure`.
An image with no ink is `empty`: reported, never classified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitnet.errors import ConfigError, InputError, ModelError

BACKENDS = ("auto", "torch", "onnx")
CHUNK = 4096  # images per model call: bounds memory for huge inputs
COVERAGE_LEVELS = (1.0, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8)


@dataclass(frozen=True)
class Prediction:
    digit: int | None  # None when the image is empty
    confidence: float  # calibrated probability of `digit` (0.0 when empty)
    probabilities: list[float]  # 10 calibrated probabilities (all 0.0 when empty)
    unsure: bool  # confidence below the model's threshold, or empty
    empty: bool  # no ink found
    image: np.ndarray  # (28, 28) float32: what the model saw

    def to_dict(self) -> dict[str, Any]:
        return {"digit": self.digit, "confidence": self.confidence, "probabilities": list(self.probabilities),
                "unsure": self.unsure, "empty": self.empty}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, float32 (N, 10)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _checked(scores: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(y).astype(np.int64).ravel()
    if s.ndim != 2 or s.shape[0] != t.shape[0] or s.shape[0] == 0:
        raise InputError(f"{what} must be shaped (N, classes) with N matching {t.shape[0]} labels, got {s.shape}")
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise InputError(f"labels must lie in [0, {s.shape[1] - 1}]")
    return s, t


def fit_temperature(logits_val: Any, y_val: Any, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T minimising the validation NLL of softmax(logits / T) (golden-section on log T)."""
    z, y = _checked(logits_val, y_val, "logits")
    z = z - z.max(axis=1, keepdims=True)
    picked = z[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - picked / math.exp(log_t)))

    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):  # NLL is convex in 1/T; the bracket shrinks to ~1e-12 of its width
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))


def choose_unsure_threshold(probs_val: Any, y_val: Any, target_accuracy: float = 0.999, *,
                            target_coverage: float | None = None, min_threshold: float = 0.5) -> float:
    """The lowest calibrated confidence still answered, chosen on validation.

    With `target_coverage` (e.g. 0.98): answer that fraction, the most confident first. Otherwise
    answer as many as possible while the answered ones stay at least `target_accuracy` correct.
    Never below `min_threshold`: a prediction that is not even a majority vote is always unsure.
    """
    p, y = _checked(probs_val, y_val, "probabilities")
    if not 0 < target_accuracy <= 1:
        raise ConfigError("target_accuracy must be in (0, 1]")
    conf = p.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    conf_sorted = conf[order]
    if target_coverage is not None:
        if not 0 < target_coverage <= 1:
            raise ConfigError("target_coverage must be in (0, 1]")
        k = max(1, math.ceil(target_coverage * len(y)))
    else:
        correct = (p.argmax(axis=1) == y)[order]
        acc_at = np.cumsum(correct) / np.arange(1, len(y) + 1)  # accuracy of the top-k answered
        ok = np.flatnonzero(acc_at >= target_accuracy)
        k = int(ok[-1]) + 1 if ok.size else 1
    return float(max(min_threshold, conf_sorted[k - 1]))


def coverage_curve(probs: Any, y: Any, levels: tuple[float, ...] = COVERAGE_LEVELS) -> list[dict[str, float]]:
    """Accuracy on the most confident `coverage` fraction; `threshold` = lowest confidence answered."""
    p, t = _checked(probs, y, "probabilities")
    conf = p.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    correct = (p.argmax(axis=1) == t)[order]
    rows = []
    for level in levels:
        k = max(1, math.ceil(level * len(t)))
        rows.append({"coverage": float(k / len(t)), "accuracy": float(correct[:k].mean()),
                     "threshold": float(conf[order[k - 1]])})
    return rows


class Predictor:
    """Calibrated digit predictions from a run folder, a model file, or the bundled "default"."""

    def __init__(self, *, run_logits: Any, name: str, version: str, temperature: float, unsure_threshold: float,
                 backend: str, source: str = "", views: int = 1) -> None:
        self._run_logits = run_logits  # float32 (N, 1, 28, 28) ndarray -> logits (N, 10) ndarray
        self._chunk = max(1, CHUNK // max(1, int(views)))  # a TTA model runs `views` copies of each image
        self.name, self.version, self.backend, self.source = name, version, backend, source
        self.temperature, self.unsure_threshold = float(temperature), float(unsure_threshold)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ModelError(f"model {name!r}: temperature must be a positive number, got {temperature}")

    @classmethod
    def load(cls, model: str | Path = "default", backend: str = "auto", threads: int | None = None) -> Predictor:
        """backend: "torch", "onnx" (ONNX Runtime), or "auto" = onnx when `model` is an .onnx file or
        an export of this very checkpoint sits beside it as model.onnx (and onnxruntime is installed),
        else torch. ONNX Runtime is the faster of the two on CPU (see BENCHMARKS.md)."""
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        if threads is not None and threads < 1:
            raise ConfigError("threads must be >= 1")
        onnx_file = _onnx_beside(model)
        if backend == "auto":
            backend = "onnx" if onnx_file is not None and _has_onnxruntime() else "torch"
        if backend == "onnx":
            return cls._load_onnx(model, onnx_file, threads)
        if str(model).endswith(".onnx"):
            raise ModelError(f"{model}: an .onnx file runs only with backend 'onnx'")
        return cls._load_torch(model, threads)

    @classmethod
    def _load_torch(cls, model: str | Path, threads: int | None) -> Predictor:
        import torch

        from digitnet.checkpoint import load_checkpoint
        from digitnet.models import views_per_image

        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        loaded = load_checkpoint(model)
        net = _fast_module(loaded.model.eval())

        def run_logits(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                xb = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)  # (N, 1, 28, 28)
                return net(xb).float().numpy()

        return cls(run_logits=run_logits, name=loaded.name, version=_checkpoint_version(loaded),
                   temperature=loaded.temperature, unsure_threshold=loaded.unsure_threshold, backend="torch",
                   source=str(loaded.path), views=views_per_image(loaded.model))

    @classmethod
    def _load_onnx(cls, model: str | Path, onnx_file: Path | None, threads: int | None) -> Predictor:
        if not _has_onnxruntime():
            raise ModelError("backend 'onnx' needs the onnxruntime package (pip install onnxruntime)")
        import onnxruntime as ort

        from digitnet.export import onnx_bytes, read_metadata

        if onnx_file is not None:
            data, source = onnx_file.read_bytes(), str(onnx_file)
        else:  # no exported file beside the checkpoint: export in memory (a few seconds, once)
            from digitnet.checkpoint import load_checkpoint

            loaded = load_checkpoint(model)
            data, source = onnx_bytes(loaded), str(loaded.path)
        meta = read_metadata(data, source)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0  # 0 = ONNX Runtime's default (one per core)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{source}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        input_name = session.get_inputs()[0].name

        def run_logits(x: np.ndarray) -> np.ndarray:
            return session.run(None, {input_name: x})[0]

        return cls(run_logits=run_logits, name=meta["model"], version=meta["version"],
                   temperature=meta["temperature"], unsure_threshold=meta["unsure_threshold"], backend="onnx",
                   source=source, views=meta["views"])

    # -- arrays ------------------------------------------------------------------------------
    def logits(self, x: Any) -> np.ndarray:
        """Raw logits (N, 10) float32 for anything `models.as_batch` accepts."""
        from digitnet.models import as_batch_array

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
        from digitnet.models import as_batch_array

        xb4 = as_batch_array(images)  # (N, 1, 28, 28), validated once
        xb = xb4[:, 0]  # (N, 28, 28)
        empty = list(empty) if empty is not None else [False] * len(xb)
        live = [i for i, e in enumerate(empty) if not e]
        probs = (softmax(self._logits_checked(xb4[live]), self.temperature) if live
                 else np.zeros((0, 10), np.float32))
        out: list[Prediction] = []
        rows = iter(probs)
        for i, is_empty in enumerate(empty):
            if is_empty:
                out.append(Prediction(None, 0.0, [0.0] * 10, True, True, xb[i]))
                continue
            p = next(rows)
            digit = int(p.argmax())
            conf = float(p[digit])
            out.append(Prediction(digit, conf, [float(v) for v in p], conf < self.unsure_threshold, False, xb[i]))
        return out

    def predict_images(self, images: list[Any], *, preprocess: bool = True) -> list[Prediction]:
        """Images (PIL or arrays, any size) → predictions, all in one batched model call."""
        from digitnet.preprocess import MIN_CONTRAST, as_mnist
        from digitnet.preprocess import preprocess as prep

        if not images:
            return []
        if preprocess:
            done = [prep(img) for img in images]
            fields, empty = [p.image for p in done], [p.empty for p in done]
        else:
            fields = [as_mnist(img) for img in images]
            empty = [float(f.max()) < MIN_CONTRAST for f in fields]
        return self.predict_arrays(np.stack(fields), empty=empty)

    def predict_file(self, path: str | Path, *, preprocess: bool = True) -> Prediction:
        from digitnet.preprocess import decode_image

        return self.predict_images([decode_image(path)], preprocess=preprocess)[0]

    def __repr__(self) -> str:
        return (f"Predictor(name={self.name!r}, version={self.version!r}, backend={self.backend!r}, "
                f"temperature={self.temperature:.4g}, unsure_threshold={self.unsure_threshold:.4g})")


def _fast_module(model: Any) -> Any:
    """Every BatchNorm folded into its conv (across the pool by `fold_for_inference`, adjacent ones
    by torch.fx), weights channels_last: same function, fewer passes over memory. Falls back to the model as is when it cannot be traced."""
    import warnings

    import torch

    from digitnet.models import fold_for_inference

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the module imports torch.jit helpers
            from torch.fx.experimental.optimization import fuse

            fused = fuse(fold_for_inference(model))
    except Exception:  # an architecture fx cannot trace: correctness first
        fused = model
    return fused.eval().to(memory_format=torch.channels_last)


def _checkpoint_version(loaded: Any) -> str:
    v = loaded.meta.get("version") if isinstance(loaded.meta, dict) else None
    if v:
        return str(v)
    from digitnet.export import file_sha256

    return file_sha256(loaded.path)[:12] if loaded.path else "unknown"


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _onnx_beside(model: str | Path) -> Path | None:
    """An .onnx file given directly, or the export next to the checkpoint (model.pt → model.onnx)
    when its metadata names this very checkpoint (sha256): a stale export is never used."""
    if str(model).endswith(".onnx"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelError(f"no ONNX model at {model}")
        return path
    from digitnet.checkpoint import resolve_model_path

    pt = resolve_model_path(model)
    onnx = pt.with_suffix(".onnx")
    if not onnx.is_file():
        return None
    from digitnet.export import file_sha256, read_metadata

    try:
        meta = read_metadata(onnx.read_bytes(), str(onnx))
    except ModelError:
        return None
    return onnx if meta.get("checkpoint_sha256") == file_sha256(pt) else None
