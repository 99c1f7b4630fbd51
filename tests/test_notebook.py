"""examples/quickstart.ipynb: committed without outputs, and it runs end to end on real MNIST."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"
    source = "\n".join(c.source for c in code)
    # the original workflow, on digitnet's API
    for needle in (
        "load_mnist()",
        "plt.imshow",
        'DigitClassifier("seed-mlp"',
        "predict_proba",
        "argmax",
        "plot_confusion_matrix",
        'DigitClassifier("cnn"',
        "DIGITNET_NOTEBOOK_EPOCHS",
    ):
        assert needle in source, needle


@pytest.mark.slow
def test_notebook_executes_on_real_mnist(mnist_dir, tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail("no 'python3' Jupyter kernel: run `python -m ipykernel install --sys-prefix` (make does)")
    # The kernel inherits this environment: real data, offline, one epoch per model.
    monkeypatch.setenv("DIGITNET_DATA", str(mnist_dir))
    monkeypatch.setenv("DIGITNET_OFFLINE", "1")
    monkeypatch.setenv("DIGITNET_NOTEBOOK_EPOCHS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    def text(cell) -> str:
        return "".join(
            o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"
        )

    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:  # for the log: epoch lines with their timings
        print(text(c))
    assert all(o.output_type != "error" for c in code for o in c.outputs)
    assert "(60000, 28, 28) uint8 (60000,) (10000, 28, 28)" in text(code[1])
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the digit and the confusion-matrix heatmap
    scores = dict(re.findall(r"^(\S+)\s+test accuracy (\d+\.\d+)%", text(code[-1]), re.M))
    assert set(scores) == {"seed-mlp", "cnn"}, text(code[-1])
    assert float(scores["seed-mlp"]) > 80.0  # the notebook's model after 1 epoch
    assert float(scores["cnn"]) >= 98.5  # the default cnn after 1 epoch
    assert os.listdir(tmp_path) == []  # the notebook writes nothing where it runs
