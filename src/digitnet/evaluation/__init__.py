"""The evaluation room: metrics dicts from probabilities and from a run (`evaluate`), the report
files (`report`, `plots`) and the probe set of images that hold no digit (`nondigits`)."""

from digitnet.evaluation.evaluate import evaluate_probs, evaluate_run, list_runs, sort_runs
from digitnet.evaluation.report import write_report

__all__ = ["evaluate_probs", "evaluate_run", "list_runs", "sort_runs", "write_report"]
