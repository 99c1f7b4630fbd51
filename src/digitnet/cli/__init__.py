"""The `digitnet` command: a thin Typer front over the library.

Each concern registers its commands from its own file (`cli/data.py`, `cli/train.py`, …); this
file only builds the app and maps `DigitnetError` to a one-line message and exit code 2, so a user
never sees a traceback for bad input. Any other exception is a bug and keeps its traceback.

The command modules import the library inside each command, not at the top: the library pulls in
torch, which would make `digitnet --help` (or `data info`) take 1.8 s instead of 0.2 s (measured on
the project's 2-core EPYC: `python -X importtime -m digitnet --help`; `import torch` alone is 1.6 s).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import click
import typer
from rich.console import Console

from digitnet.cli import bench, data, evaluate, predict, read, serve, train
from digitnet.errors import DigitnetError, DigitnetWarning

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="digitnet",
    help="Train, evaluate, explain, serve and export handwritten-digit classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for _module in (data, train, evaluate, predict, read, serve, bench):
    _module.register(app)


_show_warning = warnings.showwarning


def _warning_line(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """digitnet's own warnings are one line for a person (`warning: …`); others keep Python's form."""
    if issubclass(category, DigitnetWarning):
        err_console.print(f"warning: {message}", markup=False)
    else:
        _show_warning(message, category, *args, **kwargs)


def main(argv: list[str] | None = None) -> None:
    warnings.showwarning = _warning_line
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except DigitnetError as exc:
        err_console.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except OSError as exc:  # unwritable --out, full disk, a file where a folder should be …
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(f"error: {where}{exc.strerror or exc}", markup=False)
        sys.exit(2)
    except (typer.Abort, click.exceptions.Abort):
        err_console.print("aborted", markup=False)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.TyperException, click.exceptions.ClickException) as exc:
        # A usage error (unknown option, missing argument, bad value): Click's own message and
        # exit 2. Typer ≥ 0.29 raises its vendored Click's classes, which are not `click`'s.
        exc.show()  # type: ignore[union-attr]
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
