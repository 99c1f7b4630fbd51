"""digitnet.report / digitnet.plots: every report file is written and valid (PNG, JSON, HTML)."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from digitnet.evaluation.plots import (
    error_image,
    fig_to_png,
    plot_confusion_matrix,
    plot_curves,
    plot_misclassified,
)
from digitnet.evaluation.report import render_html, write_report
from digitnet.training.runfolder import read_history
from test_evaluate import make_run, synthetic_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    img = Image.open(io.BytesIO(data))
    img.verify()  # raises on a corrupt stream
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.width > 100 and img.height > 100
    return img


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables = 0
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag not in ("meta", "br"):
            self.stack.append(tag)
        self.tables += tag == "table"

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from digitnet.evaluation.evaluate import evaluate_run

    root = tmp_path_factory.mktemp("runs")
    run = make_run(root / "demo", model="seed-mlp", test_accuracy=0.1)
    data = synthetic_data(120)
    return run, data, evaluate_run(run, data, per_kind=4)


def test_write_report_writes_valid_files(evaluated):
    run, _, metrics = evaluated
    html_path = write_report(run, metrics)
    assert html_path == run / "report.html"
    expected = {
        "report.json",
        "confusion_matrix.json",
        "confusion_matrix.png",
        "misclassified.png",
        "calibration.png",
        "curves.png",
        "report.html",
    }
    assert expected <= {p.name for p in run.iterdir()}
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temp files behind
    for name in expected:
        if name.endswith(".png"):
            check_png((run / name).read_bytes())
    report = json.loads((run / "report.json").read_text())
    assert report["accuracy"] == metrics["accuracy"] and report["per_class"] == metrics["per_class"]
    cm = json.loads((run / "confusion_matrix.json").read_text())
    assert np.array(cm["matrix"]).sum() == 120 and cm["labels"] == list(range(10))

    page = html_path.read_text()
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.stack == []  # every element closed
    assert len(parser.images) == 4  # all four figures, embedded
    for img in parser.images:
        assert img["src"].startswith("data:image/png;base64,")
        check_png(base64.b64decode(img["src"].split(",", 1)[1]))
    text = " ".join(parser.text)
    assert f"{100 * metrics['accuracy']:.2f} %" in text
    assert "seed-mlp" in text and "92.85 %" in text  # comparison row: the notebook's reference
    assert "precision" in text and "coverage" in text.lower()
    assert "sample" in text  # evaluated on a sample: the page says so
    assert parser.tables >= 4
    assert "http://" not in page and "https://" not in page  # self-contained


def test_error_gallery_images_travel_in_the_dict(evaluated):
    _, data, metrics = evaluated
    assert metrics["worst_errors"]
    for err in metrics["worst_errors"]:
        np.testing.assert_array_equal(error_image(err), data.x_test[err["index"]])
        np.testing.assert_array_equal(error_image(err, data.x_test), data.x_test[err["index"]])
    fig = plot_misclassified(metrics["worst_errors"][:3])
    assert len(fig.axes) == 3 and fig.axes[0].get_title().startswith(
        f"true {metrics['worst_errors'][0]['true']}"
    )


def test_html_escapes_untrusted_text():
    metrics = {
        "run": "<script>alert(1)</script>",
        "model": "cnn",
        "n": 1,
        "accuracy": 1.0,
        "error_count": 0,
        "config": {"note": "<b>x</b>"},
        "calibration": {"ece": 0.0},
    }
    page = render_html(metrics, {})
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page


def test_confusion_matrix_heatmap_draws_every_count():
    cm = np.arange(100).reshape(10, 10)
    fig = plot_confusion_matrix(cm)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [str(v) for v in range(100)]
    check_png(fig_to_png(fig))
    norm = plot_confusion_matrix(cm, normalize=True)
    assert norm.axes[0].texts[11].get_text() == f"{11 / cm[1].sum():.2f}"


def test_confusion_matrix_draws_into_given_axes():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert plot_confusion_matrix(np.eye(10, dtype=int), ax=ax) is fig
    assert len(ax.texts) == 100


def test_gallery_and_curves_handle_empty_inputs():
    check_png(fig_to_png(plot_misclassified([])))
    check_png(fig_to_png(plot_curves([])))
    errors = [{"index": 0, "true": 3, "pred": 5, "confidence": 0.9, "p_true": 0.05}]
    fig = plot_misclassified(errors, np.zeros((1, 784), np.uint8))
    assert "true 3 → 5" in fig.axes[0].get_title()


def test_read_history(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss,val_accuracy,lr\n1,0.5,,0.1\n2,0.25,0.9,0.05\n")
    rows = read_history(path)
    assert rows == [
        {"epoch": 1, "train_loss": 0.5, "lr": 0.1},
        {"epoch": 2, "train_loss": 0.25, "val_accuracy": 0.9, "lr": 0.05},
    ]  # empty cells dropped
    assert read_history(tmp_path / "missing.csv") == []
    fig = plot_curves(rows)
    assert [line.get_label() for line in fig.axes[1].lines] == ["val"]
