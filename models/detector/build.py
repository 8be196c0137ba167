"""Build the detector of a data split: the AE trains on its normal images, the predictor on its labelled anomalies
plus its normal pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.detector.config import DetectorConfig
from models.detector.training import Detector

if TYPE_CHECKING:  # the data's types only: models import nothing from envs at run time
    from envs.mvtec import Category
    from envs.split import Split

__all__ = ["build_detector"]


def build_detector(config: DetectorConfig, category: Category, split: Split, seed: int) -> Detector:
    """The detector that ``config`` trains on ``split`` of ``category`` (evaluate.py rebuilds it the same way from a
    run's config before loading the weights).

    Args:
        config: the detector's hyperparameters (:func:`envs.config.detector_config` gives an env config's).
        category: the loaded images and masks.
        split: which of them train the AE (``train``) and the predictor (``labelled`` + ``normal_pool``, the latter with
            empty masks: a contaminated image in it is unlabelled, as it would be for a user); with
            ``vetted_predictor_data`` the synthetic defects and the global residual take ``train/good`` alone.
        seed: seeds the detector's private generator (the env passes its own seed).
    """
    pool = np.concatenate([split.labelled, split.normal_pool])
    vetted = split.config.vetted_predictor_data and split.contaminated.size
    return Detector(
        config,
        category.images[split.train],
        category.images[pool],
        split.known_masks(category.masks, pool),
        seed=seed,
        reference_images=category.images[split.train_good] if vetted else None,
    )
