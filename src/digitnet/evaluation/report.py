"""The evaluation report: JSON, PNG figures and one self-contained HTML page in the run folder.

`write_report(run, metrics)` takes the dict from `digitnet.evaluation.evaluate.evaluate_run` and writes,
each file atomically: report.json, confusion_matrix.json, confusion_matrix.png, misclassified.png,
calibration.png, curves.png and report.html (figures embedded as data URIs, so the page can be
mailed or archived on its own).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from digitnet.evaluation.plots import (
    fig_to_png,
    plot_calibration,
    plot_confusion_matrix,
    plot_curves,
    plot_misclassified,
)
from digitnet.training.runfolder import read_history
from digitnet.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

FIGURES = {
    "confusion_matrix.png": "Confusion matrix",
    "misclassified.png": "Most confident errors",
    "calibration.png": "Calibration (reliability diagram)",
    "curves.png": "Training curves",
}


def _pct(x: Any, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f} %" if isinstance(x, int | float) and math.isfinite(x) else "–"


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return html.escape(str(x)) if x is not None else "–"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x else f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h1{margin-bottom:.2em}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:.3em .7em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.kv td{text-align:left}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.5em}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em;border-radius:4px}
"""


def render_html(metrics: dict[str, Any], figures: dict[str, bytes]) -> str:
    """One self-contained page: summary, comparison, figures, per-class, coverage, config."""
    m = metrics
    esc = html.escape
    data = m.get("data", {})
    parts = [
        f"<h1>digitnet report: {esc(str(m.get('run', '')))}</h1>",
        f'<p class="sub">model <b>{esc(str(m.get("model", "?")))}</b> · evaluated '
        f"{esc(str(m.get('evaluated_at', '')))} · {m.get('n', 0):,} test images from "
        f"{esc(str(data.get('name', '?')))} ({esc(str(data.get('source', '')))})</p>",
    ]
    if data.get("is_sample"):
        parts.append(
            f'<p class="warn">Evaluated on the offline <b>sample</b> ({m.get("n", 0):,} test images), '
            "not the full MNIST test set: numbers are indicative only.</p>"
        )
    cal = m.get("calibration", {})
    cards = [
        ("test accuracy", _pct(m.get("accuracy"))),
        ("errors", f"{m.get('error_count', 0):,} / {m.get('n', 0):,}"),
        ("macro F1", _num(m.get("macro_avg", {}).get("f1"))),
        ("ECE", _num(cal.get("ece"))),
        ("NLL", _num(m.get("nll"))),
        ("temperature", _num(m.get("temperature"))),
    ]
    parts.append(
        '<div class="cards">'
        + "".join(f'<div class="card">{esc(k)}<b>{v}</b></div>' for k, v in cards)
        + "</div>"
    )

    c = m.get("comparison")
    if c:
        parts.append("<h2>Against the seed-mlp baseline</h2>")
        red = c.get("error_reduction")
        parts.append(
            _table(
                ["model", "test accuracy", "baseline", "baseline accuracy", "difference", "errors removed"],
                [
                    [
                        esc(str(m.get("model", "?"))),
                        _pct(c.get("accuracy")),
                        esc(str(c.get("source", ""))),
                        _pct(c.get("baseline_accuracy")),
                        f"{100 * c.get('delta', 0):+.2f} pts",
                        _pct(red, 1) if red is not None else "–",
                    ]
                ],
                "comparison",
            )
        )

    parts.append("<h2>Figures</h2>")
    for name, caption in FIGURES.items():
        if name in figures:
            b64 = base64.b64encode(figures[name]).decode("ascii")
            parts.append(
                f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>"
            )

    parts.append("<h2>Per class</h2>")
    f4 = "{:.4f}".format
    rows = [
        [str(r["label"]), f4(r["precision"]), f4(r["recall"]), f4(r["f1"]), f"{r['support']:,}"]
        for r in m.get("per_class", [])
    ]
    for label in ("macro_avg", "weighted_avg"):
        a = m.get(label)
        if a:
            rows.append(
                [
                    label.replace("_", " "),
                    f4(a["precision"]),
                    f4(a["recall"]),
                    f4(a["f1"]),
                    f"{a['support']:,}",
                ]
            )
    parts.append(_table(["class", "precision", "recall", "F1", "support"], rows, "per-class"))

    if m.get("coverage"):
        parts.append(
            "<h2>Accuracy at each coverage level</h2><p>Answering only the most confident predictions.</p>"
        )
        parts.append(
            _table(
                ["coverage", "accuracy", "confidence threshold"],
                [
                    [_pct(r.get("coverage")), _pct(r.get("accuracy"), 3), _num(r.get("threshold"))]
                    for r in m["coverage"]
                ],
                "coverage",
            )
        )
    u = m.get("unsure")
    if u:
        parts.append(
            f"<p>Flagged unsure at the run's threshold {_num(u.get('threshold'))}: {u.get('flagged', 0):,} "
            f"({_pct(u.get('flagged_fraction'))}); accuracy on the rest "
            f"{_pct(u.get('accuracy_answered'), 3)}.</p>"
        )
    rj = m.get("rejection")
    if rj:
        parts.append("<h2>Not a digit</h2>")
        parts.append(
            f"<p>Separation of MNIST test digits from images of the held-out kinds "
            f"({html.escape(', '.join(rj['held_out_kinds']))}: never seen in training), by "
            f"{html.escape(rj['score'])}: AUROC <b>{_num(rj['auroc'])}</b>, false-positive rate at 95 % true "
            f"positives <b>{_pct(rj['fpr_at_95_tpr'])}</b> (training kinds: AUROC "
            f"{_num(rj['auroc_training_kinds'])}). At the shipped thresholds (not a digit below "
            f"{_num(rj['thresholds']['not_a_digit'])}, unsure below {_num(rj['thresholds']['unsure'])}), "
            f"flagged: MNIST test digits {_pct(rj['mnist_test']['flagged'])}, "
            f"real digit photos {_pct(rj['real_photos']['flagged'])} (accuracy "
            f"{_pct(rj['real_photos']['accuracy'])}, wrong and confident "
            f"{_pct(rj['real_photos']['wrong_and_confident'])}); blank pages reported empty "
            f"{rj['blank_pages']['empty']}/{rj['blank_pages']['n']}.</p>"
        )
        rows = [
            [
                html.escape(k),
                "held out" if v["held_out"] else "trained on",
                f"{v['n']:,}",
                _pct(v["flagged"]),
                _pct(v["not_a_digit"]),
            ]
            for k, v in rj["non_digits"]["by_kind"].items()
        ]
        parts.append(
            _table(
                ["kind of non-digit", "in training", "images", "flagged", "not a digit"], rows, "rejection"
            )
        )

    if m.get("worst_errors"):
        parts.append("<h2>Most confident errors</h2>")
        parts.append(
            _table(
                ["test index", "true", "predicted", "confidence", "p(true)"],
                [
                    [
                        str(e["index"]),
                        str(e["true"]),
                        str(e["pred"]),
                        _pct(e["confidence"]),
                        _pct(e["p_true"]),
                    ]
                    for e in m["worst_errors"]
                ],
                "errors",
            )
        )

    parts.append("<h2>Run</h2>")
    tm = m.get("train_metrics") or {}
    kv = [[esc(k), esc(_num(v) if not isinstance(v, dict | list) else str(v))] for k, v in tm.items()]
    if kv:
        parts.append("<h3>metrics.json</h3>" + _table(["metric", "value"], kv, "kv"))
    kv = [[esc(k), esc(str(v))] for k, v in (m.get("config") or {}).items()]
    if kv:
        parts.append("<h3>Training configuration</h3>" + _table(["option", "value"], kv, "kv"))

    title = esc(f"digitnet report: {m.get('run', '')}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f"<body>{''.join(parts)}</body></html>\n"
    )


def write_report(run: str | Path, metrics: dict[str, Any]) -> Path:
    """Write the report files into `run` from `evaluate_run`'s dict; return the report.html path."""
    run = Path(run)
    atomic_write_json(run / "report.json", metrics)
    atomic_write_json(
        run / "confusion_matrix.json",
        {
            "labels": list(range(len(metrics["confusion_matrix"]))),
            "rows": "true label",
            "columns": "predicted label",
            "matrix": metrics["confusion_matrix"],
        },
    )
    title = f"Confusion matrix: {metrics.get('run', '')} ({_pct(metrics.get('accuracy'))})"
    figures = {
        "confusion_matrix.png": fig_to_png(plot_confusion_matrix(metrics["confusion_matrix"], title=title)),
        "misclassified.png": fig_to_png(plot_misclassified(metrics.get("worst_errors", []))),
        "calibration.png": fig_to_png(plot_calibration(metrics["calibration"])),
        "curves.png": fig_to_png(plot_curves(read_history(run / "history.csv"))),
    }
    for name, png in figures.items():
        atomic_write_bytes(run / name, png)
    atomic_write_text(run / "report.html", render_html(metrics, figures))
    return run / "report.html"
