"""The training room: `TrainConfig` (`config`), the loop (`loop`), its recipe pieces (`recipe`),
one command's run (`run.train`), run folders (`runfolder`), ensembles, DDP and progress output."""

from digitnet.training.config import TrainConfig
from digitnet.training.loop import FitResult, fit
from digitnet.training.run import calibrate, train

__all__ = ["FitResult", "TrainConfig", "calibrate", "fit", "train"]
