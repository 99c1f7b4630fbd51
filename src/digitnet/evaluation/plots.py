"""Figures from metric dicts: confusion matrix, error gallery, reliability diagram, training curves.

Each function returns a `matplotlib.figure.Figure`. Figures are built without pyplot on an Agg
canvas, so they render headless and never touch a GUI backend or global pyplot state; pass `ax=`
(e.g. from `plt.subplots()` in a notebook) to draw into an existing axes instead.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def new_figure(width: float, height: float, dpi: int = 100) -> Any:
    """A pyplot-free Figure on an Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def fig_to_png(fig: Any) -> bytes:
    """Render a Figure to PNG bytes (Agg)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def plot_confusion_matrix(
    cm: Any,
    ax: Any = None,
    *,
    normalize: bool = False,
    cmap: str = "Blues",
    title: str | None = "Confusion matrix",
) -> Any:
    """Annotated heatmap of a (10, 10) confusion matrix (rows true, columns predicted).

    The notebook's `sns.heatmap(cm, annot=True, fmt="d")`, without seaborn. `normalize=True`
    shows each row as fractions of its true class (recall on the diagonal).
    """
    counts = np.asarray(cm, dtype=np.float64)
    k = counts.shape[0]
    values = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None) if normalize else counts
    fig = new_figure(7.5, 6.5) if ax is None else ax.figure
    ax = fig.add_subplot() if ax is None else ax
    im = ax.imshow(values, cmap=cmap, vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    high = values.max() / 2 if values.size else 0
    for i in range(k):
        for j in range(k):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if values[i, j] > high else "black",
            )
    ax.set_xticks(range(k), [str(c) for c in range(k)])
    ax.set_yticks(range(k), [str(c) for c in range(k)])
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    if title:
        ax.set_title(title)
    return fig


def error_image(err: dict[str, Any], images: Any = None) -> np.ndarray:
    """The (28, 28) image of one error: images[err["index"]], or its base64 "pixels" (uint8 bytes)."""
    if images is not None:
        return np.asarray(images[err["index"]]).reshape(28, 28)
    return np.frombuffer(base64.b64decode(err["pixels"]), dtype=np.uint8).reshape(28, 28)


def plot_misclassified(errors: Sequence[dict[str, Any]], images: Any = None, ncols: int = 8) -> Any:
    """Gallery of errors: each image with its true label, prediction and confidence.

    errors: from `evaluate.evaluate_run` (each carries its "pixels") or `evaluate.worst_errors`
    together with `images`, the uint8 (N, 28, 28) array their "index" points into.
    """
    n = len(errors)
    fig = new_figure(1.5 * min(ncols, max(n, 1)), 1.85 * max(1, -(-n // ncols)) + 0.4)
    if n == 0:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        return fig
    nrows = -(-n // ncols)
    axes = fig.subplots(nrows, min(ncols, n), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, err in zip(axes.flat, errors, strict=False):
        img = error_image(err, images)
        ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
        ax.set_title(
            f"true {err['true']} → {err['pred']}\n{err['confidence']:.1%}", fontsize=9, color="#b00020"
        )
    fig.suptitle("Most confident errors (true → predicted, confidence)")
    return fig


def plot_calibration(calib: dict[str, Any], ax: Any = None) -> Any:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with ECE in the title."""
    fig = new_figure(6.5, 5.5) if ax is None else ax.figure
    ax = fig.add_subplot() if ax is None else ax
    bins = [b for b in calib["bins"] if b["count"]]
    width = calib["bins"][0]["upper"] - calib["bins"][0]["lower"]
    lowers = [b["lower"] for b in bins]
    ax.bar(
        lowers,
        [b["accuracy"] for b in bins],
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy",
    )
    ax.bar(
        lowers,
        [b["confidence"] - b["accuracy"] for b in bins],
        bottom=[b["accuracy"] for b in bins],
        width=width,
        align="edge",
        color="#dd8452",
        alpha=0.5,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for b in bins:
        ax.text(
            b["lower"] + width / 2,
            0.02,
            str(b["count"]),
            rotation=90,
            fontsize=7,
            ha="center",
            va="bottom",
            color="white",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram, ECE = {calib['ece']:.4f}")
    ax.legend(loc="upper left")
    return fig


def plot_curves(history: Sequence[dict[str, Any]]) -> Any:
    """Loss and accuracy per epoch (train and, where present, validation)."""
    fig = new_figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    if not history:
        for ax in (ax_loss, ax_acc):
            ax.text(0.5, 0.5, "no history.csv", ha="center", va="center", transform=ax.transAxes)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            pts = [(e, row.get(f"{split}_{metric}")) for e, row in zip(epochs, history, strict=True)]
            pts = [(e, v) for e, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return fig
