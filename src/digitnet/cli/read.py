"""`digitnet read` (whole numbers: one string of digits per image) and `digitnet bench read`.

read takes the same files, folders and globs as `predict`; an unreadable file gets a one-line
error (and `{"file", "error"}` in --json), the others are still read, and the exit code is 2 at
the end. `--annotate DIR` writes each image with its digits' boxes drawn on it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from digitnet.cli.options import Backend, DataDir, JsonOut, Offline, load_data
from digitnet.cli.predict import expand_paths
from digitnet.errors import InputError
from digitnet.utils import atomic_write_bytes

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

ReaderModel = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="A `reader` run folder or model.pt, or 'default' (the bundled reader)."
    ),
]
SecondOpinion = Annotated[
    str,
    typer.Option(
        "--classifier",
        help="The digit model asked about digits that stand apart: 'default' (the bundled one), a run, "
        "or 'none' (the reader alone).",
    ),
]


def read_cmd(
    paths: Annotated[
        list[str], typer.Argument(help="Image files, folders or globs (PNG, JPEG, GIF, BMP, WebP, TIFF).")
    ],
    model: ReaderModel = "default",
    json_out: JsonOut = False,
    annotate: Annotated[
        Path | None,
        typer.Option(
            "--annotate", help="Write each image with its digits' boxes drawn on it into this folder (PNG)."
        ),
    ] = None,
    backend: Backend = "auto",
    classifier: SecondOpinion = "default",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the model (default: the backend's).")
    ] = None,
) -> None:
    """Read the whole number in each image: its digits left to right, a box and confidence each."""
    from digitnet.inference.lines import decode_for_reading
    from digitnet.inference.reader import Reader

    files, errors = expand_paths(paths)
    rows: list[dict[str, Any]] = []
    for message in errors:
        err_console.print(f"error: {message}", markup=False)
    failed = len(errors)
    if files:
        reader = Reader.load(model, backend=backend, threads=threads, classifier=classifier)
        names = _annotation_names(files)
        for f in files:
            try:
                img = decode_for_reading(f)
            except InputError as exc:
                err_console.print(f"error: {exc}", markup=False)
                rows.append({"file": str(f), "error": str(exc)})
                failed += 1
                continue
            reading = reader.read(img).to_dict()
            rows.append({"file": str(f), **reading})
            if annotate is not None:
                write_annotated(img, reading, annotate / names[f])
    if json_out:
        typer.echo(json.dumps(rows))
    elif any("number" in r for r in rows):
        _print_table([r for r in rows if "number" in r])
    if failed:
        read = sum("number" in r for r in rows)
        raise InputError(f"{failed} of {len(files) + len(errors)} inputs could not be read; {read} read")
    if not files:
        raise InputError("no input files")


def _print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(show_edge=False, header_style="bold")
    table.add_column("file", overflow="fold")
    table.add_column("number", justify="right")
    table.add_column("confidence", justify="right")
    table.add_column("digits (confidence)", overflow="fold")
    table.add_column("unsure", justify="center")
    for r in rows:
        if not r["digits"]:
            table.add_row(r["file"], "–", "–", "(no digits found)", "")
            continue
        per_digit = "  ".join(f"{d['digit']}:{d['confidence']:.2f}" for d in r["digits"])
        flag = "[yellow]unsure[/]" if r["unsure"] else ""
        table.add_row(r["file"], f"[bold]{r['number']}[/]", f"{r['confidence']:.1%}", per_digit, flag)
    console.print(table)


def _annotation_names(files: list[Path]) -> dict[Path, str]:
    """`photo.read.png` for each input; inputs that share a stem (a/1.png, b/1.png, b/1.jpg) take
    `1.read.png`, `1-2.read.png`, … in input order, so no annotation overwrites another."""
    names: dict[Path, str] = {}
    seen: dict[str, int] = {}
    for f in files:
        stem = Path(f).stem
        seen[stem] = seen.get(stem, 0) + 1
        names[f] = f"{stem}.read.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.read.png"
    return names


def write_annotated(img: Image.Image, reading: dict[str, Any], out: Path) -> None:
    """The image with a box and the digit read over each digit (marks in grey); PNG, atomically."""
    canvas = img.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 300))
    for d in reading["digits"]:
        x0, y0, x1, y1 = d["box"]
        colour = (230, 120, 0) if d["confidence"] < 0.9 else (0, 160, 60)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        draw.text(
            (x0 + width, max(0, y0 - 12 * width)), str(d["digit"]), fill=colour, font_size=max(12, 10 * width)
        )
    for x0, y0, x1, y1 in reading["marks"]:
        draw.rectangle([x0, y0, x1, y1], outline=(140, 140, 140), width=width)
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    atomic_write_bytes(out, buf.getvalue())


def register(app: typer.Typer) -> None:
    app.command("read")(read_cmd)


def bench_read(
    model: ReaderModel = "default",
    per_cell: Annotated[int, typer.Option("--per-cell", help="Photos per (length, spacing).")] = 100,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest number (digits).")] = 8,
    peer: Annotated[
        str | None, typer.Option("--peer", help="Also read the same files with: tesseract.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Which photos: same seed, same photos.")] = 7,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="A second reader (run folder or model file) on the same photos."),
    ] = None,
    baseline_one_look: Annotated[
        bool,
        typer.Option(
            "--baseline-one-look",
            help="The baseline (without --baseline: the model itself) reads without second looks.",
        ),
    ] = False,
    backend: Annotated[
        str, typer.Option("--backend", help="torch | onnx | auto | all (onnx and torch side by side).")
    ] = "auto",
    classifier: SecondOpinion = "default",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the model (default: the backend's).")
    ] = None,
    json_out: JsonOut = False,
    data_dir: DataDir = None,
    offline: Offline = False,
) -> None:
    """Whole-number accuracy by length and spacing, digit error rate and ms per photo, beside a peer."""
    from digitnet.bench.read import ReadBenchConfig, run_read_bench

    cfg = ReadBenchConfig(
        model=model,
        per_cell=per_cell,
        max_length=max_length,
        seed=seed,
        peer=peer,
        baseline=baseline,
        baseline_one_look=baseline_one_look,
        backend=backend,
        classifier=classifier,
        threads=threads,
    )
    result = run_read_bench(cfg, load_data("mnist", data_dir, offline))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    for name, r in result["results"].items():
        table = Table(
            title=f"{name}{_how(r)}: {r['photos']} photos, {r['accuracy']:.1%} whole numbers right, "
            f"digit error rate {r['digit_error_rate']:.2%}",
            header_style="bold",
        )
        table.add_column("spacing")
        for n in r["lengths"]:
            table.add_column(f"{n}", justify="right")
        table.add_column("all", justify="right")
        table.add_column("95 % interval", justify="right")  # how far luck of the draw can move "all"
        for spacing, accs in r["accuracy_by_length"].items():
            low, high = r["accuracy_by_spacing_95ci"][spacing]
            table.add_row(
                spacing,
                *(f"{a:.0%}" for a in accs),
                f"{r['accuracy_by_spacing'][spacing]:.1%}",
                f"{low:.1%}–{high:.1%}",
            )
        console.print(table)
        console.print(
            f"  {r['photos_per_s']:,.1f} photos/s · p50 {r['ms_p50']:.1f} ms · p99 {r['ms_p99']:.1f} ms"
            + (
                f" · 6 digits p50 {r['six_digit_ms_p50']:.1f} ms p99 {r['six_digit_ms_p99']:.1f} ms"
                if r["six_digit_ms_p50"] is not None
                else ""
            )
        )
        shares = [
            f"{r[key]:.0%} of the {what} readings"
            for key, what in (("unsure_among_wrong", "wrong"), ("unsure_among_right", "right"))
            if r.get(key) is not None
        ]
        if shares:
            sure = r.get("right_among_sure")
            console.print(
                f"  unsure: {', '.join(shares)}"
                + (f"; the others are {sure:.1%} right" if sure is not None else "")
            )
    console.print(f"{result['environment']['cpu']} · torch {result['environment']['torch']}", markup=False)


def _how(result: dict) -> str:
    """How a digitnet reader ran, e.g. " (onnx, int8)"; nothing for the peer's figures."""
    return f" ({result['backend']}, {result['precision']})" if "precision" in result else ""
