"""Two-step inference: settings, the per-case pipeline, folder runs (serial or on Ray) and their reports."""

from flareseg.inference.config import MODES, InferenceConfig
from flareseg.inference.distributed import RayRunner, predict_folder_ray
from flareseg.inference.folder import predict_folder, run_folder
from flareseg.inference.pipeline import TwoStepPredictor, predict_case
from flareseg.inference.reports import BatchReport, PredictionReport

__all__ = ["MODES", "BatchReport", "InferenceConfig", "PredictionReport", "RayRunner", "TwoStepPredictor", "predict_case", "predict_folder", "predict_folder_ray", "run_folder"]
