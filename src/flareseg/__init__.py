"""flareseg: two-step abdominal CT segmentation of 13 organs and pan-cancer lesions (FLARE23).

The public API (imported lazily: ``import flareseg`` loads neither torch nor SimpleITK)::

    import flareseg
    seg = flareseg.predict("ct.nii.gz", "ct_seg.nii.gz", organ_model="models/organ", tumor_model="models/tumor")
    seg.label            # Volume: uint8 ids 0-14 on the input's exact grid
    seg.report.timings   # seconds per stage
    flareseg.predict_folder("imagesTs/", "predictions/", organ_model=..., tumor_model=...)
    flareseg.evaluate("predictions/", "labelsTs/", "scores/")
    flareseg.prepare("FLARE23/", "prepared/"); flareseg.train("prepared/", "models/organ", task="organ")

See docs/api.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # inference
    "predict": "flareseg.inference.pipeline",
    "predict_folder": "flareseg.inference.folder",
    "predict_folder_ray": "flareseg.inference.distributed",
    "RayRunner": "flareseg.inference.distributed",
    "Segmentation": "flareseg.inference.pipeline",
    "TwoStepPredictor": "flareseg.inference.pipeline",
    "InferenceConfig": "flareseg.inference.config",
    "PredictionReport": "flareseg.inference.reports",
    "BatchReport": "flareseg.inference.reports",
    "pseudolabel": ("flareseg.inference.pseudolabel", "pseudolabel_cohort"),
    # training and data
    "prepare": ("flareseg.data.cohort", "prepare_cohort"),
    "train": ("flareseg.training.loop", "train"),
    "synthesize_cohort": ("flareseg.data.synthetic", "generate_cohort"),
    "SynthConfig": "flareseg.data.synthetic",
    "NetworkConfig": "flareseg.config",
    "PreprocessConfig": "flareseg.config",
    "TrainConfig": "flareseg.config",
    "AugmentConfig": "flareseg.config",
    "get_preset": "flareseg.config",
    # evaluation
    "evaluate": ("flareseg.evaluation.evaluate", "evaluate_folder"),
    # volumes
    "Volume": "flareseg.io",
    "read_image": "flareseg.io",
    "read_label": "flareseg.io",
    "write_label": "flareseg.io",
    # errors
    "FlaresegError": "flareseg.errors",
    "InputError": "flareseg.errors",
    "GeometryError": "flareseg.errors",
    "ConfigError": "flareseg.errors",
    "ModelFolderError": "flareseg.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'flareseg' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
