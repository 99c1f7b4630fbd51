"""Recipe exploration: many (variant, seed) `fit` runs side by side, e.g. on a borrowed GPU.

    DIGITNET_DATA=../shared/mnist PYTHONPATH=src python scripts/sweep.py --device cuda --workers 14 \\
        --out sweep-out [--jobs c4-e60:3,c4-e40:0 …]

Each run trains a registry recipe with the overrides below on the 55,000-image split (the same
5,000 held out as `digitnet train`), keeps its best-on-validation weights and scores the
validation and test sets three ways: one view (`val`, `test`), the mean over the unshifted image
and its four one-pixel shifts (`*_plus5`), and over all nine shifts within a pixel (`*_tta9`, what
`best` predicts with since session 4).
`OUT/results.json` (one row per run) and `OUT/probs.npz` (float16 test probabilities, for
ensembles) are rewritten after every finished run, so a killed sweep keeps what finished.
This chooses recipes only: the figures in BENCHMARKS.md come from `digitnet train` on the CPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np

C4 = dict(stem=32, blocks=[(32, False), (64, True), (128, True), (128, False)])  # `best` since session 3
VARIANTS: dict[str, tuple[str, dict]] = {  # name: (registry model, TrainConfig overrides)
    "compact-e20": ("compact", dict(epochs=20)),
    "compact-e60": ("compact", dict(epochs=60)),
    "compact-e100": ("compact", dict(epochs=100)),
    "compact-e60-aug07": ("compact", dict(epochs=60, augment=0.7)),
    "compact-e60-aug13": ("compact", dict(epochs=60, augment=1.3)),
    "compact-e60-el15": ("compact", dict(epochs=60, elastic=1.5)),
    "compact-e60-bs256": ("compact", dict(epochs=60, batch_size=256, lr=0.2)),
    "compact-e60-ls0": ("compact", dict(epochs=60, label_smoothing=0.0)),
    "compact-e60-wd1e3": ("compact", dict(epochs=60, weight_decay=1e-3)),
    "compact-e60-cos": ("compact", dict(epochs=60, schedule="cosine", warmup=0.05)),
    "old-best-e40": (
        "compact",
        dict(epochs=40, model_kwargs=dict(stem=32, blocks=[(64, False), (64, True), (128, True)])),
    ),
    "old-best-e50": (
        "compact",
        dict(epochs=50, model_kwargs=dict(stem=32, blocks=[(64, False), (64, True), (128, True)])),
    ),
    "wide-e40": (
        "compact",
        dict(epochs=40, model_kwargs=dict(stem=48, blocks=[(64, True), (128, True), (256, False)])),
    ),
    "c4-e40": ("compact", dict(epochs=40, model_kwargs=C4)),
    "c4-e50": ("compact", dict(epochs=50, model_kwargs=C4)),
    "c4-e60": ("compact", dict(epochs=60, model_kwargs=C4)),
    "c4-e40-fp32": ("compact", dict(epochs=40, model_kwargs=C4, bf16=False)),
    "best": ("best", dict(epochs=40)),  # the registry recipe as is
}


def view_probs(model, x: np.ndarray, device: str) -> np.ndarray:
    """Softmax of `model` on each of the 9 one-pixel shifts of x: (9, N, 10), view 4 = unshifted."""
    import torch

    from digitnet.inference.batching import as_batch
    from digitnet.networks import shifted_views, single_view

    xb = as_batch(x)
    out = []
    with torch.no_grad(), single_view(model.eval().to(device)):
        for i in range(0, len(xb), 500):  # 9 views: 4,500 images at a time
            v = shifted_views(xb[i : i + 500].to(device), 1)  # (9·b, 1, 28, 28)
            out.append(torch.softmax(model(v).float(), 1).reshape(9, -1, 10).cpu())
    return torch.cat(out, 1).numpy()


PLUS = [1, 3, 4, 5, 7]  # the unshifted view and its four one-pixel neighbours


def run_one(job: tuple[str, int], device: str, epochs: int | None) -> tuple[dict, np.ndarray]:
    import torch

    from digitnet.data import load_dataset
    from digitnet.training.config import TrainConfig
    from digitnet.training.loop import fit, stratified_split

    torch.set_num_threads(1)  # many runs share the machine's cores
    torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 (bf16 is the recipe's autocast switch)
    name, seed = job
    model, overrides = VARIANTS[name]
    data = load_dataset("mnist", os.environ.get("DIGITNET_DATA") or None)
    cfg = TrainConfig.for_model(
        model, seed=seed, device=device, **{**overrides, "epochs": epochs or overrides["epochs"]}
    )
    tr, va = stratified_split(np.asarray(data.y_train), cfg.val_size)
    t0 = time.time()
    res = fit(cfg, data.x_train[tr], data.y_train[tr], data.x_train[va], data.y_train[va])
    row = dict(
        name=name,
        seed=seed,
        best_epoch=res.best_epoch,
        epochs=len(res.history),
        wall=round(time.time() - t0, 1),
    )
    # Accuracy without and with test-time augmentation (mean softmax over shifted copies).
    for split, x, y in (("val", data.x_train[va], data.y_train[va]), ("test", data.x_test, data.y_test)):
        views = view_probs(res.model, x, device)  # (9, N, 10)
        for tta, probs in (("", views[4]), ("_plus5", views[PLUS].mean(0)), ("_tta9", views.mean(0))):
            row[split + tta] = float((probs.argmax(1) == np.asarray(y)).mean())
        if split == "test":
            test_probs = views[4]
            row["errors"] = int((test_probs.argmax(1) != np.asarray(y)).sum())
    return row, test_probs.astype(np.float16)


def write_results(out: str, results: list[dict], probs: dict[str, np.ndarray]) -> None:
    from digitnet.utils import atomic_open, atomic_write_json

    atomic_write_json(f"{out}/results.json", results)
    with atomic_open(f"{out}/probs.npz") as f:
        np.savez(f, **probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--jobs", default="", help="NAME:SEED,… (default: every variant, seeds 0-2)")
    ap.add_argument("--out", default=os.environ.get("OUT", "sweep-out"))
    ap.add_argument("--epochs", type=int, default=None, help="override every variant's epochs (smoke tests)")
    ap.add_argument("--seconds", type=float, default=1e9, help="start no new run after this many seconds")
    args = ap.parse_args()
    jobs = (
        [(j.split(":")[0], int(j.split(":")[1])) for j in args.jobs.split(",")]
        if args.jobs
        else [(n, s) for n in VARIANTS for s in range(3)]
    )
    unknown = {n for n, _ in jobs} - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    os.makedirs(args.out, exist_ok=True)
    deadline, results, probs = time.time() + args.seconds, [], {}
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        running = []
        while jobs or running:
            while jobs and len(running) < args.workers and time.time() < deadline:
                job = jobs.pop(0)
                running.append((job, pool.apply_async(run_one, (job, args.device, args.epochs))))
            if time.time() >= deadline:
                jobs = []
            for job, handle in [r for r in running if r[1].ready()]:
                running.remove((job, handle))
                try:
                    row, p = handle.get()
                    probs[f"{job[0]}__{job[1]}"] = p
                except Exception as e:  # one failed run should not lose the others
                    row = dict(name=job[0], seed=job[1], error=repr(e)[:300])
                results.append(row)
                print(json.dumps(row), flush=True)
                write_results(args.out, results, probs)
            time.sleep(1)


if __name__ == "__main__":
    main()
