"""The detector: autoencoder + predictor training, the predictor's pool, anomaly maps and checkpoints.

One module per job: :mod:`.config` (hyperparameters), :mod:`.inputs` (what the networks read), :mod:`.training` (the
:class:`Detector` and its training steps), :mod:`.pool` (the predictor's training pool and positives), :mod:`.maps`
(anomaly maps), :mod:`.checkpoint` (state dicts and files), :mod:`.build` (a detector for a data split).
"""

from models.detector.build import build_detector
from models.detector.checkpoint import CHECKPOINT_FORMAT
from models.detector.config import PREDICTOR_INPUTS, PREDICTOR_LOSSES, DetectorConfig
from models.detector.maps import ae_baseline_maps, close_maps, fuse_global, smooth_maps
from models.detector.training import Detector

__all__ = [
    "CHECKPOINT_FORMAT",
    "PREDICTOR_INPUTS",
    "PREDICTOR_LOSSES",
    "Detector",
    "DetectorConfig",
    "ae_baseline_maps",
    "build_detector",
    "close_maps",
    "fuse_global",
    "smooth_maps",
]
