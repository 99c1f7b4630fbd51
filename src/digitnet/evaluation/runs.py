"""Run folders as a collection: reading their JSON, listing and sorting them (`digitnet runs`),
and the seed-mlp baseline a report compares against. Plain JSON and paths: no torch, so
`digitnet runs` answers at once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from digitnet.errors import InputError, ModelError

# The original notebook's seed-mlp result: the baseline when no seed-mlp run sits beside this one.
SEED_MLP_REFERENCE = 0.9285


def read_json(path: Path, *, strict: bool = False) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file is absent. An unreadable file, or JSON that is not
    an object, is {} too (a listing skips it), or with `strict` a `ModelError` naming the file."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if strict:
            raise ModelError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
        return {}
    if not isinstance(value, dict):
        if strict:
            raise ModelError(f"{path}: expected a JSON object, found {type(value).__name__}")
        return {}
    return value


def seed_mlp_baseline(run: Path, accuracy: float) -> dict[str, Any]:
    """The comparison row: the best seed-mlp run beside `run`, else the notebook's 92.85 %."""
    best: tuple[float, Path] | None = None
    parent = run.resolve().parent
    for metrics_path in sorted(parent.glob("*/metrics.json")):
        if metrics_path.parent.resolve() == run.resolve():
            continue
        m = read_json(metrics_path)
        model = m.get("model") or read_json(metrics_path.parent / "manifest.json").get("config", {}).get(
            "model"
        )
        acc = m.get("test_accuracy")
        if model == "seed-mlp" and isinstance(acc, int | float) and (best is None or acc > best[0]):
            best = (float(acc), metrics_path.parent)
    if best is not None:
        base, source = best[0], f"seed-mlp run {best[1].name}"
        kind = "run"
    else:
        base, source, kind = (
            SEED_MLP_REFERENCE,
            "seed-mlp reference: the original notebook's 92.85 %",
            "reference",
        )
    base_err, err = 1.0 - base, 1.0 - accuracy
    return {
        "baseline": "seed-mlp",
        "kind": kind,
        "source": source,
        "baseline_accuracy": base,
        "accuracy": accuracy,
        "delta": accuracy - base,
        "error_reduction": (1.0 - err / base_err) if base_err > 0 else None,
    }


def _run_date(run: Path, metrics: dict[str, Any], manifest: dict[str, Any]) -> str:
    for value in (metrics.get("finished"), manifest.get("finished"), manifest.get("started")):
        if isinstance(value, str) and value:
            return value
    src = run / "metrics.json" if (run / "metrics.json").exists() else run / "manifest.json"
    return datetime.fromtimestamp(src.stat().st_mtime, UTC).isoformat(timespec="seconds")


def list_runs(root: str | Path = "runs", max_depth: int = 3) -> list[dict[str, Any]]:
    """One row per run folder under `root` (a folder with metrics.json or manifest.json)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    folders: set[Path] = set()
    for depth in range(1, max_depth + 1):
        for name in ("metrics.json", "manifest.json"):
            folders.update(p.parent for p in root.glob("/".join(["*"] * depth) + "/" + name))
    rows = []
    for run in sorted(folders):
        metrics, manifest = read_json(run / "metrics.json"), read_json(run / "manifest.json")
        config: dict[str, Any] = manifest["config"] if isinstance(manifest.get("config"), dict) else {}

        def pick(key: str, m: dict[str, Any] = metrics, c: dict[str, Any] = config) -> Any:
            return m.get(key, c.get(key))

        rows.append(
            {
                "name": run.relative_to(root).as_posix(),
                "model": pick("model"),
                "epochs": pick("epochs"),
                "seed": pick("seed"),
                "val_accuracy": metrics.get("val_accuracy"),
                "test_accuracy": metrics.get("test_accuracy"),
                "train_seconds": metrics.get("train_seconds"),
                "date": _run_date(run, metrics, manifest),
                "path": str(run),
            }
        )
    return rows


SORT_KEYS = ("test_accuracy", "date", "train_seconds", "name")


def sort_runs(rows: list[dict[str, Any]], key: str = "test_accuracy") -> list[dict[str, Any]]:
    """Best first: highest accuracy, newest date, fastest training, or by name; missing values last."""
    if key not in SORT_KEYS:
        raise InputError(f"cannot sort by {key!r}; choose one of: {', '.join(SORT_KEYS)}")
    descending = key in ("test_accuracy", "date")
    kind = (int, float) if key in ("test_accuracy", "train_seconds") else str
    present = [r for r in rows if isinstance(r.get(key), kind) and not isinstance(r.get(key), bool)]
    missing = [r for r in rows if not (isinstance(r.get(key), kind) and not isinstance(r.get(key), bool))]
    return sorted(present, key=lambda r: r[key], reverse=descending) + missing
