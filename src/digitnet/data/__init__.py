"""The data room: MNIST found, read, verified and cached (`mnist`), the IDX container (`idx`),
mirrors (`download`). It returns NumPy arrays and imports nothing above it."""

from digitnet.data.mnist import (
    FILES,
    MnistData,
    Splits,
    TestSplit,
    cache_dir,
    load_dataset,
    load_for_demo,
    load_mnist,
    load_sample,
)

__all__ = [
    "FILES",
    "MnistData",
    "Splits",
    "TestSplit",
    "cache_dir",
    "load_dataset",
    "load_for_demo",
    "load_mnist",
    "load_sample",
]
