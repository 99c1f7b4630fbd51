"""`digitnet bench read`: whole-number accuracy and speed on photos of numbers, beside a peer.

It composes a seeded set of number photos from MNIST *test* digits (lengths 1–8 × spaced, tight
and touching, `per_cell` of each; paper-like backgrounds, JPEG, blur, slight rotation:
`data.synth.photo`), writes them to a temporary folder, reads every file with digitnet (decode →
read, timed per photo; with `baseline`, a second reader such as the previous bundled one takes
turns with it, or with `baseline_one_look` the same reader without its second looks) and, with
`peer="tesseract"`, reads the same files with Tesseract 5 (`--psm 7`, one text line, digits
whitelist) in the same run. Reported: whole-number accuracy by length and by spacing (with its
95 % interval: `wilson`), the digit error rate (edit distance / digits), photos/s, p50/p99 ms per
photo, and p50/p99 for the 6-digit photos alone.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitnet.bench.common import environment, ms
from digitnet.data import TestSplit
from digitnet.data.synth import SPACINGS, number, photo
from digitnet.errors import ConfigError
from digitnet.inference.predictor import BACKENDS
from digitnet.inference.reader import Reader

PEERS = ("tesseract",)
TESSERACT_ARGS = ["--psm", "7", "-c", "tessedit_char_whitelist=0123456789"]


@dataclass(frozen=True)
class ReadBenchConfig:
    model: str = "default"
    # Photos per (length, spacing): 2,400 in all. 800 a spacing pin a rate of 97 % to ±1.2 points
    # (`wilson`); the 600 of `per_cell=25` only to ±2.5, wider than the gaps the targets ask about.
    per_cell: int = 100
    max_length: int = 8
    seed: int = 7
    peer: str | None = None
    baseline: str | None = None  # a second reader (a run folder or model file) on the same photos
    baseline_one_look: bool = False  # the baseline (by default `model` itself) without second looks
    backend: str = "auto"  # or "all": the reader on ONNX Runtime and on torch, side by side
    classifier: str | None = "default"  # the digit model's second opinion ("none": the reader alone)
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.per_cell <= 10_000:
            raise ConfigError(f"per_cell must be 1 to 10,000, got {self.per_cell}")
        if not 1 <= self.max_length <= 12:
            raise ConfigError(f"max_length must be 1 to 12, got {self.max_length}")
        if self.backend not in (*BACKENDS, "all"):
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}, all")
        if self.peer is not None and self.peer not in PEERS:
            raise ConfigError(f"unknown peer {self.peer!r}; choose one of: {', '.join(PEERS)}")
        if self.peer == "tesseract" and shutil.which("tesseract") is None:
            raise ConfigError(
                "--peer tesseract: no `tesseract` on PATH (Debian: apt-get install tesseract-ocr)"
            )


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def make_photos(data: TestSplit, cfg: ReadBenchConfig, folder: Path) -> list[dict[str, Any]]:
    """The benchmark's photos, written into `folder`: [{"file", "text", "length", "spacing"}]."""
    rng = np.random.default_rng(cfg.seed)
    x, y = np.asarray(data.x_test), np.asarray(data.y_test)
    cases: list[dict[str, Any]] = []
    for spacing in SPACINGS:
        for length in range(1, cfg.max_length + 1):
            for _ in range(cfg.per_cell):
                shot = photo(number(x, y, length, rng, spacing, hard=False), rng, spacing)
                path = folder / f"{len(cases):05d}.{'jpg' if shot.format == 'JPEG' else 'png'}"
                path.write_bytes(shot.data)
                cases.append({"file": str(path), "text": shot.text, "length": length, "spacing": spacing})
    return cases


def tesseract_read(path: str) -> str:
    """The digits Tesseract reads in one file; "" when it fails or takes over a minute (an
    answer like any wrong one, not a crash of the benchmark)."""
    try:
        out = subprocess.run(
            ["tesseract", path, "stdout", *TESSERACT_ARGS],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return "".join(ch for ch in out.stdout if ch.isdigit())


def score(cases: list[dict[str, Any]], answers: list[str], seconds: list[float]) -> dict[str, Any]:
    """Accuracy by length and spacing, digit error rate and timing for one reader's answers."""
    right = [a == c["text"] for a, c in zip(answers, cases, strict=True)]
    errors = sum(edit_distance(a, c["text"]) for a, c in zip(answers, cases, strict=True))
    digits = sum(len(c["text"]) for c in cases)
    of_spacing = {s: [r for r, c in zip(right, cases, strict=True) if c["spacing"] == s] for s in SPACINGS}
    by_spacing = {s: float(np.mean(v)) for s, v in of_spacing.items()}
    lengths = sorted({c["length"] for c in cases})
    by_length = {
        s: [
            float(
                np.mean(
                    [r for r, c in zip(right, cases, strict=True) if c["spacing"] == s and c["length"] == n]
                )
            )
            for n in lengths
        ]
        for s in SPACINGS
    }
    six = [t for t, c in zip(seconds, cases, strict=True) if c["length"] == 6]
    return {
        "accuracy": float(np.mean(right)),
        "accuracy_by_spacing": by_spacing,
        "accuracy_by_spacing_95ci": {s: wilson(sum(v), len(v)) for s, v in of_spacing.items()},
        "accuracy_by_length": by_length,
        "lengths": lengths,
        "digit_error_rate": errors / max(1, digits),
        "photos": len(cases),
        "photos_per_s": round(len(cases) / sum(seconds), 1),
        "ms_p50": ms(seconds, 50),
        "ms_p99": ms(seconds, 99),
        "six_digit_ms_p50": ms(six, 50) if six else None,
        "six_digit_ms_p99": ms(six, 99) if six else None,
    }


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """The 95 % Wilson score interval [low, high] of a rate of k right in n: how far a cell's
    accuracy can fall from the reader's true rate by the luck of which photos were drawn (200
    photos right at 97 %: 93.6-98.6 %; 800: 95.6-98.0 %)."""
    if n == 0:
        return [0.0, 1.0]
    p, z2 = k / n, z * z
    mid = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]


def unsure_shares(cases: list[dict[str, Any]], answers: list[str], unsure: list[bool]) -> dict[str, Any]:
    """Does `unsure` point at the wrong readings? The share of wrong and of right answers flagged,
    and how many of the answers not flagged are right (None where there are none). Tesseract gives
    no such flag."""
    wrong = [a != c["text"] for a, c in zip(answers, cases, strict=True)]
    flagged = list(zip(unsure, wrong, strict=True))
    among = {w: [u for u, is_wrong in flagged if is_wrong == w] for w in (True, False)}
    sure = [not is_wrong for u, is_wrong in flagged if not u]
    return {
        "unsure_among_wrong": float(np.mean(among[True])) if among[True] else None,
        "unsure_among_right": float(np.mean(among[False])) if among[False] else None,
        "right_among_sure": float(np.mean(sure)) if sure else None,
    }


def read_all(readers: dict[str, Reader], cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each reader's figures on the benchmark's files, each photo timed from its file to the
    number; the readers take turns photo by photo, in alternating order, so a slower moment of the
    machine falls on all."""
    for reader in readers.values():
        reader.read(cases[0]["file"])  # warm-up: first-call allocations, not reading
    answers: dict[str, list[str]] = {name: [] for name in readers}
    seconds: dict[str, list[float]] = {name: [] for name in readers}
    unsure: dict[str, list[bool]] = {name: [] for name in readers}
    names = list(readers)
    for i, case in enumerate(cases):
        for name in names if i % 2 == 0 else names[::-1]:  # neither always first (warm caches)
            reader = readers[name]
            t = time.perf_counter()
            reading = reader.read(case["file"])  # decode → read, end to end
            seconds[name].append(time.perf_counter() - t)
            answers[name].append(reading.number)
            unsure[name].append(reading.unsure)
    return {
        name: score(cases, answers[name], seconds[name])
        | unsure_shares(cases, answers[name], unsure[name])
        | {
            "version": reader.version,
            "backend": reader.backend,
            "precision": reader.precision,
            "source": reader.source,
            "classifier": reader.classifier.version if reader.classifier else None,
            "second_looks": [list(look) for look in reader.second_looks],
        }
        for name, reader in readers.items()
    }


def run_read_bench(cfg: ReadBenchConfig, data: TestSplit) -> dict[str, Any]:
    """Build the photos, read them with digitnet (and the peer); returns the JSON-able figures."""
    backends = ("onnx", "torch") if cfg.backend == "all" else (cfg.backend,)
    readers = {
        "digitnet" if b == backends[0] else f"digitnet-{b}": Reader.load(
            cfg.model, backend=b, threads=cfg.threads, classifier=cfg.classifier
        )
        for b in backends
    }
    if cfg.baseline is not None or cfg.baseline_one_look:
        readers["baseline"] = Reader.load(
            cfg.baseline or cfg.model, backend=backends[0], threads=cfg.threads, classifier=cfg.classifier
        )
        if cfg.baseline_one_look:  # what the second looks at unsure readings add, in the same run
            readers["baseline"].second_looks = ()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="digitnet-bench-read-") as tmp:
        cases = make_photos(data, cfg, Path(tmp))
        results.update(read_all(readers, cases))
        if cfg.peer == "tesseract":
            answers, seconds = [], []
            for case in cases:
                t = time.perf_counter()
                answers.append(tesseract_read(case["file"]))
                seconds.append(time.perf_counter() - t)
            results["tesseract"] = score(cases, answers, seconds)
            version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True, check=False)
            lines = (version.stdout or version.stderr).splitlines()
            results["tesseract"]["version"] = lines[0] if lines else "tesseract (version unknown)"
    env = environment(cfg.threads)
    return {
        "config": asdict(cfg),
        "reader": {"name": readers["digitnet"].name, "version": readers["digitnet"].version},
        "results": results,
        "environment": env,
        "data": getattr(data, "source", ""),
    }
