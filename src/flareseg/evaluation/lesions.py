"""Lesion-wise detection beside the official lesion DSC (DESIGN.md section 7b).

The official lesion DSC scores a case with no reference lesion and no predicted lesion as 1, so a
model that never predicts a lesion shows a high mean on a cohort where most cases hold no lesion.
Counting lesions cannot flatter that way:

* A **lesion** is a 26-connected component (face, edge or corner neighbours; ``cc3d``) of a lesion
  mask, separately in the reference and in the prediction.
* A reference lesion is **detected** (a true positive, TP) when at least one predicted lesion voxel
  lies inside it; otherwise it is **missed** (a false negative, FN).
* A predicted lesion that shares no voxel with any reference lesion is a **false positive** (FP).

So a reference lesion hit by two predicted components counts once (1 TP, 0 FP), and one predicted
component that covers two reference lesions detects both (2 TP, 0 FP). Pooled over cases:

    sensitivity = TP / (TP + FN)            (None when there is no reference lesion at all)
    FP per case = FP / number of cases      (None for no case)
    F1          = 2 TP / (2 TP + FN + FP)   (None when there is no lesion, reference or predicted)

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cc3d
import numpy as np

from flareseg.errors import GeometryError

CONNECTIVITY = 26
"""Voxels that share a face, an edge or a corner belong to the same lesion."""


@dataclass(frozen=True)
class LesionCounts:
    """Lesion-wise detection in one case.

    Attributes:
        reference: reference lesions (26-connected components of the reference mask).
        detected: reference lesions with at least one predicted lesion voxel inside (TP).
        predicted: predicted lesions (26-connected components of the predicted mask).
        false_positives: predicted lesions that share no voxel with the reference mask (FP).
    """

    reference: int
    detected: int
    predicted: int
    false_positives: int

    @property
    def missed(self) -> int:
        """Reference lesions without a predicted voxel inside (FN)."""
        return self.reference - self.detected


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    if not mask.any():
        return np.zeros(mask.shape, np.uint8), 0
    labels, n = cc3d.connected_components(mask, connectivity=CONNECTIVITY, return_N=True)
    return labels, int(n)


def detect_lesions(reference: np.ndarray, prediction: np.ndarray) -> LesionCounts:
    """Count reference lesions, detected ones, predicted lesions and false positives in one case.

    Args:
        reference: (I, J, K) bool mask of the reference lesion voxels (e.g. ``labels == 14``).
        prediction: (I, J, K) bool mask of the predicted lesion voxels, on the same voxel grid.

    Returns:
        A :class:`LesionCounts`. Two empty masks give all counts 0; an empty prediction gives
        ``detected = 0`` and ``missed = reference``; an empty reference makes every predicted lesion a
        false positive.

    Raises:
        GeometryError: the two masks differ in shape (both shapes named).
    """
    reference, prediction = np.asarray(reference, dtype=bool), np.asarray(prediction, dtype=bool)
    if reference.shape != prediction.shape:
        raise GeometryError(f"lesion masks differ in shape: reference {reference.shape}, prediction {prediction.shape}")
    ref_components, n_ref = _components(reference)
    pred_components, n_pred = _components(prediction)
    overlap = reference & prediction
    detected = int(np.count_nonzero(np.unique(ref_components[overlap])))
    hitting = int(np.count_nonzero(np.unique(pred_components[overlap])))
    return LesionCounts(reference=n_ref, detected=detected, predicted=n_pred, false_positives=n_pred - hitting)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def pool_detections(counts: Iterable[LesionCounts]) -> dict:
    """Pool per-case :class:`LesionCounts` over a cohort.

    Returns:
        A JSON-ready dict: ``n_cases``; ``reference_lesions``, ``detected``, ``missed``,
        ``predicted_lesions`` and ``false_positives`` (sums over cases); ``sensitivity`` = detected /
        reference lesions; ``fp_per_case`` = false positives / cases; ``f1`` = 2 TP / (2 TP + FN + FP).
        Each ratio is a float, unrounded, or None when its denominator is 0: ``sensitivity`` when no
        reference holds a lesion, ``fp_per_case`` for no case, ``f1`` when there is no lesion at all.
    """
    counts = list(counts)
    tp = sum(c.detected for c in counts)
    fn = sum(c.missed for c in counts)
    fp = sum(c.false_positives for c in counts)
    return {
        "n_cases": len(counts),
        "reference_lesions": tp + fn,
        "detected": tp,
        "missed": fn,
        "predicted_lesions": sum(c.predicted for c in counts),
        "false_positives": fp,
        "sensitivity": _ratio(tp, tp + fn),
        "fp_per_case": _ratio(fp, len(counts)),
        "f1": _ratio(2 * tp, 2 * tp + fn + fp),
    }
