"""`digitnet bench predict`: how fast one `Predictor` answers, per backend.

Three figures, each the median/percentiles of repeated timings after a warm-up:
- batch throughput: `predict_proba` on 1,000 images (images/s);
- single-image latency: `predict_proba` on one (1, 28, 28) image, the model call only;
- end to end: `predict_file` on a PNG (read + decode + preprocess + predict).
Inputs are synthetic (speed does not depend on pixel values), so no dataset is needed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from digitnet.bench.common import environment, ms, timed
from digitnet.errors import ConfigError
from digitnet.inference.predictor import Predictor


@dataclass(frozen=True)
class PredictBenchConfig:
    model: str = "default"
    backend: str = "auto"  # torch | onnx | auto | all
    n: int = 1000  # single-image timings (model call and end to end each)
    batch_size: int = 1000
    batch_repeats: int = 20
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("torch", "onnx", "auto", "all"):
            raise ConfigError("backend must be torch, onnx, auto or all")
        if self.n < 10 or self.batch_size < 1 or self.batch_repeats < 1:
            raise ConfigError("n must be >= 10; batch_size and batch_repeats >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be >= 1")


def _digit_png(path: Path) -> None:
    """A 240×180 photo-like PNG of a hand-drawn "7": dark strokes on light, noisy paper."""
    rng = np.random.default_rng(0)
    img = Image.new("L", (240, 180), 230)
    draw = ImageDraw.Draw(img)
    draw.line([(80, 40), (160, 40), (110, 150)], fill=30, width=9, joint="curve")
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    noisy = np.asarray(img, np.float32) + rng.normal(0, 6, (180, 240))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)


def bench_backend(predictor: Predictor, cfg: PredictBenchConfig, png: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (cfg.batch_size, 28, 28), dtype=np.uint8)
    one = batch[:1]
    batch_times = timed(lambda: predictor.predict_proba(batch), cfg.batch_repeats, warmup=3)
    single = timed(lambda: predictor.predict_proba(one), cfg.n, warmup=50)
    e2e = timed(lambda: predictor.predict_file(png), cfg.n, warmup=20)
    return {
        "backend": predictor.backend,
        "model": predictor.name,
        "version": predictor.version,
        "batch_size": cfg.batch_size,
        "images_per_s": round(cfg.batch_size / float(np.median(batch_times)), 1),
        "batch_ms_p50": ms(batch_times, 50),
        "latency_p50_ms": ms(single, 50),
        "latency_p99_ms": ms(single, 99),
        "e2e_p50_ms": ms(e2e, 50),
        "e2e_p99_ms": ms(e2e, 99),
        "n": cfg.n,
        "batch_repeats": cfg.batch_repeats,
    }


def run_predict_bench(cfg: PredictBenchConfig) -> dict[str, Any]:
    """Benchmark each requested backend; returns {"results": [per-backend dict], "environment": {...}}."""
    backends = ["torch", "onnx"] if cfg.backend == "all" else [cfg.backend]
    results = []
    with tempfile.TemporaryDirectory(prefix="digitnet-bench-") as tmp:
        png = Path(tmp) / "digit.png"
        _digit_png(png)
        for backend in backends:
            t = time.perf_counter()
            predictor = Predictor.load(cfg.model, backend=backend, threads=cfg.threads)
            load_s = time.perf_counter() - t
            results.append({**bench_backend(predictor, cfg, png), "load_s": round(load_s, 3)})
    return {"config": asdict(cfg), "results": results, "environment": environment(cfg.threads)}
