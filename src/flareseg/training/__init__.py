"""Training of the organ and tumour models: data, augmentation, schedule, loop, validation, checkpoints.

:func:`train` (in :mod:`flareseg.training.loop`) writes a model folder that inference reads.
"""

from flareseg.training.loop import resolve_model_config, train

__all__ = ["resolve_model_config", "train"]
