"""The reader alone against the reader with the digit classifier's second opinion, on photos of
numbers composed from the *validation* digits (the 5,000 held out of MNIST train, as `digitnet
train` holds them out): where the second opinion and its weight were chosen. Prints, for each,
whole numbers right by spacing, the wrong readings, and how `unsure` sorts them.

    DIGITNET_DATA=../shared/mnist PYTHONPATH=src python scripts/second_opinion.py [--per-cell 50]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from digitnet.data import load_dataset
from digitnet.data.synth import SPACINGS, number, photo
from digitnet.inference.reader import Reader
from digitnet.training.loop import split_sizes, stratified_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-cell", type=int, default=50, help="photos per (length, spacing)")
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--model", default="default", help="the reader")
    args = ap.parse_args()
    data = load_dataset()
    _, va = stratified_split(np.asarray(data.y_train), split_sizes(len(data.y_train), 5000))
    x, y = np.asarray(data.x_train)[va], np.asarray(data.y_train)[va]
    readers = {
        "reader alone": Reader.load(args.model, threads=1, classifier="none"),
        "with second opinion": Reader.load(args.model, threads=1),
    }
    rng = np.random.default_rng(args.seed)
    seen: dict[str, list[tuple[str, bool, bool]]] = {name: [] for name in readers}
    for spacing in SPACINGS:
        for length in range(1, 9):
            for _ in range(args.per_cell):
                shot = photo(number(x, y, length, rng, spacing, hard=False), rng, spacing)
                for name, reader in readers.items():
                    reading = reader.read(shot.data)
                    seen[name].append((spacing, reading.number == shot.text, reading.unsure))
    out = {}
    for name, rows in seen.items():
        wrong = [u for _, ok, u in rows if not ok]
        sure = [ok for _, ok, u in rows if not u]
        out[name] = {
            "by_spacing": {s: float(np.mean([ok for sp, ok, _ in rows if sp == s])) for s in SPACINGS},
            "wrong": len(wrong),
            "unsure_among_wrong": float(np.mean(wrong)) if wrong else None,
            "right_among_sure": float(np.mean(sure)) if sure else None,
        }
    print(json.dumps({"photos": len(rows), "seed": args.seed, "results": out}, indent=2))


if __name__ == "__main__":
    main()
