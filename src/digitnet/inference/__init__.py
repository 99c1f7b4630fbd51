"""The inference room: any image → 28×28 (`preprocess`), calibrated predictions from torch or ONNX
Runtime (`predictor`, `calibration`), the model's input form (`batching`), BatchNorm folding
(`folding`) and the ONNX export (`export`). It never imports training, serve, cli or bench."""

from digitnet.inference.predictor import BACKENDS, Prediction, Predictor

__all__ = ["BACKENDS", "Prediction", "Predictor"]
