"""``MVTecPatch-v0``: the neural batch sampler's environment (paper §III.A-B, §IV.C-D; docs/design.md).

The env *is* the training process of the autoencoder and the predictor: each ``step`` moves the sampler's crop,
feeds the chosen 64x64 patch to the autoencoder's mini-batch, trains the AE and the predictor when the batch is full,
and returns the paper's composite reward. The detector, the history maps and the global step counter ``j`` live on
across episodes.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from envs import warmup_cache
from envs.config import MVTecPatchConfig, detector_config
from envs.data import DATA_KEYS, load_env_data
from models.detector import build_detector
from models.runtime import generator_state, set_generator_state
from models.structural import fused_structural_map, sobel_magnitude

logger = logging.getLogger(__name__)

SKIP = 8
# (dy, dx) per action: N, S, W, E, NW, NE, SW, SE; action 8 is skip
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


class MVTecPatchEnv(gym.Env):
    """
    ## Description
    A neural batch sampler walks a 128x128 crop over the defect-free training images of an MVTec AD category and
    picks the 64x64 patches an autoencoder learns from. Inside ``step`` the env trains the autoencoder (one Adam
    step per 32 patches) and the predictor that maps the AE's loss profiles to defect masks (one step per AE
    update, after ``predictor_freeze_steps``), so a policy that chooses patches well shapes the residual space
    in which the few labelled defects become separable.

    ## Action Space
    ``Discrete(9)``: 0 N, 1 S, 2 W, 3 E, 4 NW, 5 NE, 6 SW, 7 SE move the crop centre by ``move_step`` pixels,
    clamped so the crop stays inside the image; the patch at the new centre joins the AE's mini-batch.
    8 skip: no patch is taken; the sampler jumps to a new random training image and centre (its way out of an
    exhausted image).

    ## Observation Space
    ``Box(0, 1, (C, crop, crop), float32)``, **channel-first** (SB3's layout for non-uint8 image input; the card's
    128x128x6 content with the channel axis first). ``observation="enriched"`` (paper): C=6 = RGB, fused
    structural map, history map, previous ARE. ``"rgb_history"`` (Chu & Kitani): C=4 = RGB, history map.
    History map: ``n / (n + 1)`` for a pixel covered by ``n`` patches so far (0 unvisited, 0.5 once, -> 1).
    Previous ARE: the current AE's channel-mean residual ``|x - x_hat|`` of the image from the last AE update,
    divided by the 99th percentile of the pre-trained AE's residuals and clipped to [0, 1].

    ## Rewards
    ``R = beta (R_clone + R_cover) + (1 - beta) R_pred`` with ``beta = max(beta_min, 1 - j / L)``. Each term is
    kept in [-1, 1] so that none drowns the others: ``R_clone = clip(mean Sobel(P) / s, 0, 1)`` with ``s`` the
    99th percentile of the mean Sobel magnitude of random training patches (measured at warm-up);
    ``R_cover = -mean(H_P)`` over the history map under the patch before it is counted; ``R_pred = -min(l_pred, 1)``,
    the latest predictor loss. A skip has ``R_clone = R_cover = 0``. ``info`` carries every term.

    ``reward="defect_avoid"`` adds a term with per-patch credit, ``R_defect = -q`` in [-1, 0]: ``q`` is the highest
    defect probability of the detector's current anomaly map (:meth:`Detector.anomaly_map`) inside the chosen patch,
    so a patch the detector takes for a defect costs up to 1 (the AE should not learn what looks defective). A skip
    takes no patch and gets the mean ``q`` of the eight moves' patches: as good as a random move from here, no better.
    ``info["r_defect"]`` carries it; ``reward="paper"`` (the default) computes no map and adds nothing.

    ## Starting State
    A random training image and a random crop centre (from ``self.np_random``). The first ``reset`` also runs the
    warm-ups (AE pre-training, fused maps, predictor warm-up), so every plugged-in algorithm starts alike.
    ``reset()`` without a seed continues the training process; ``reset(seed=...)`` also returns it to where it
    started (the warmed-up state, or the loaded checkpoint): one seed then fixes the whole trajectory, as
    Gymnasium's determinism contract asks. SB3 seeds only the first reset of a run.

    ## Episode End
    After ``episode_length`` steps (default 32, one AE mini-batch), with ``terminated=True`` so that Monte-Carlo
    returns are not bootstrapped; there is no truncation. The detector and ``global_step`` persist.

    ## Arguments
    See :class:`MVTecPatchConfig`. ``info["rl_feedback"]`` (and :attr:`rl_feedback`) is False for the first
    ``feedback_start_steps`` steps, in which the sampler must get no RL feedback.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, render_mode: str | None = None, warmup_cache: str | Path | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is invalid: expected None or 'rgb_array'")
        self.config = config = MVTecPatchConfig.from_kwargs(**kwargs)
        self.render_mode = render_mode
        self.warmup_cache = None if warmup_cache is None else Path(warmup_cache).expanduser()
        self.category, self.split = load_env_data(config)
        self.detector = build_detector(detector_config(config), self.category, self.split, seed=config.seed)
        train_images = self.category.images[self.split.train]  # uint8 (N, S, S, 3)
        self.train_images = train_images
        n, size = len(train_images), config.image_size
        self.history = np.zeros((n, size, size), dtype=np.uint16)  # patch visits per pixel
        self.fused = np.zeros((n, size, size), dtype=np.uint8)  # fused structural map, quantised to 1/255
        self.clone_scale = 1.0
        self.residual_scale = 1.0
        self.warmed_up = False
        self.global_step = 0  # j: env steps since the start of training, across episodes
        self.patch_buffer: list[np.ndarray] = []  # float32 (3, p, p) patches waiting for the next AE update
        self.last_pred_loss = float("nan")
        self.last_ae_loss = float("nan")
        self._residual_cache: tuple[int, int, np.ndarray] | None = None  # (image, ae_version, residual map)
        self._defect_cache: tuple[tuple[int, int, int], np.ndarray] | None = None  # ((image, AE, predictor versions), map)
        self._restart_point: dict[str, Any] | None = None  # the training state a seeded reset returns to

        n_channels = 6 if config.observation == "enriched" else 4
        crop = config.crop_size
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_channels, crop, crop), dtype=np.float32)
        self.action_space = spaces.Discrete(9)
        self.image_index = 0
        self.center = (size // 2, size // 2)  # (y, x)
        self.episode_step = 0
        self.last_patch_corner: tuple[int, int] | None = None

    # ----------------------------------------------------------------------------------------------- warm-up
    def warm_up(self, progress: bool = False) -> None:
        """AE pre-training, fused maps and reward scales, predictor warm-up (paper §III.E). Runs once.

        With ``warmup_cache`` (a folder) the result is read from there when a run with the same data, seed, detector
        config and machine has already computed it, and written there otherwise (:mod:`envs.warmup_cache`): the same
        state, bit for bit, without the wait."""
        if self.warmed_up:
            return
        if self.warmup_cache is None:
            self._compute_warm_up(progress)
            self._finish_warm_up("done")
            return
        key = warmup_cache.warmup_key(self)
        path = warmup_cache.entry_path(self.warmup_cache, self, key)
        with warmup_cache.entry_lock(path):  # a run that wants the same entry meanwhile waits for it, then reads it
            if warmup_cache.load(self, path, key):
                self._finish_warm_up(f"read from the warm-up cache {path}")
                return
            self._compute_warm_up(progress)
            warmup_cache.save(self, path, key)
        self._finish_warm_up("done")

    def _compute_warm_up(self, progress: bool) -> None:
        detector = self.detector
        pretrain_losses = detector.pretrain_ae(progress=progress)
        self.last_ae_loss = pretrain_losses[-1] if pretrain_losses else float("nan")
        residuals = detector.residual_map(self.train_images)  # float32 (N, S, S), the pre-trained AE's MAE map
        self.residual_scale = float(np.percentile(residuals, 99)) or 1.0
        weights, sigma = detector.config.fused_weights, detector.config.fused_blur_sigma
        for i, (image, residual) in enumerate(zip(self.train_images, residuals)):  # fixed context: computed once
            self.fused[i] = np.round(255 * fused_structural_map(image, residual, weights, sigma)).astype(np.uint8)
        logger.info("fused structural maps of %d training images", len(self.train_images))
        patches = detector.random_patches(256).numpy()  # (256, 3, p, p)
        self.clone_scale = float(np.percentile([sobel_magnitude(x).mean() for x in patches], 99)) or 1.0
        self.last_pred_loss = detector.warmup_predictor(progress=progress)[-1] if self.config.predictor_warmup_updates else 1.0

    def _finish_warm_up(self, how: str) -> None:
        self.warmed_up = True
        self._residual_cache = self._defect_cache = None
        self._restart_point = self._snapshot()
        logger.info("warm-up %s: clone scale %.4f, residual scale %.4f", how, self.clone_scale, self.residual_scale)

    @property
    def rl_feedback(self) -> bool:
        """False during the first ``feedback_start_steps`` steps: their transitions must not train the sampler."""
        return self.global_step >= self.config.feedback_start_steps

    @property
    def beta(self) -> float:
        return max(self.config.beta_min, 1.0 - self.global_step / self.config.beta_decay_steps)

    # ------------------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:  # dropout in the AE's updates draws from torch's global generator
            np.random.seed(seed)
            torch.manual_seed(seed)
        self.warm_up()
        if seed is not None and self._restart_point is not None and self._restart_point["global_step"] != self.global_step:
            self._restore(self._restart_point)
        self._jump()
        self.episode_step = 0
        return self._observation(), self._info(0.0, 0.0)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is invalid: expected an integer in [0, 8]")
        action = int(action)
        j = self.global_step
        r_clone = r_cover = 0.0
        # before the move and the detector's update: the patch as the detector saw it when it was chosen
        q = self._action_defect_probability(action) if self.config.reward == "defect_avoid" else None
        if action == SKIP:
            self._jump()
            self.last_patch_corner = None
        else:
            self.center = self._move(self.center, action)
            r_clone, r_cover = self._take_patch()
        if len(self.patch_buffer) >= self.config.ae_batch_size:
            self._train_detector(j)
        self.global_step += 1
        self.episode_step += 1
        r_pred = -min(self.last_pred_loss, 1.0)
        beta = max(self.config.beta_min, 1.0 - j / self.config.beta_decay_steps)
        reward = beta * (r_clone + r_cover) + (1.0 - beta) * r_pred
        info = self._info(r_clone, r_cover, beta=beta, r_pred=r_pred, step=j)
        if q is not None:
            reward -= q
            info["r_defect"] = -q
        if action != SKIP:  # a diagnostic the sampler never sees: the ground-truth defect share of the AE's patch
            info["patch_defect"] = self._patch_defect_share()
        # truncation=False: episodes have a fixed length and end with terminated=True, so returns are not bootstrapped
        terminated = self.episode_step >= self.config.episode_length
        return self._observation(), float(reward), terminated, False, info

    def render(self) -> np.ndarray | None:
        """The current image with the history map (red), the crop (green) and the last patch (yellow), beside the
        fused map and the current residual map: uint8 (S, 3S, 3)."""
        if self.render_mode != "rgb_array":
            return None
        crop, p = self.config.crop_size, self.config.patch_size
        image = self.train_images[self.image_index].astype(np.float32)  # (S, S, 3)
        visited = 0.6 * self._history_map(self.image_index)[..., None]  # (S, S, 1), more red where sampled more
        frame = np.ascontiguousarray((1 - visited) * image + visited * np.array([255.0, 0.0, 0.0]), dtype=np.uint8)
        cy, cx = self.center
        cv2.rectangle(frame, (cx - crop // 2, cy - crop // 2), (cx + crop // 2 - 1, cy + crop // 2 - 1), (0, 255, 0), 1)
        if self.last_patch_corner is not None:
            y, x = self.last_patch_corner
            cv2.rectangle(frame, (x, y), (x + p - 1, y + p - 1), (255, 220, 0), 1)
        fused = np.asarray(cv2.applyColorMap(self.fused[self.image_index], cv2.COLORMAP_VIRIDIS))[..., ::-1]
        residual = np.round(self._residual(self.image_index) * 255).astype(np.uint8)
        residual_rgb = np.asarray(cv2.applyColorMap(residual, cv2.COLORMAP_INFERNO))[..., ::-1]
        return np.concatenate([frame, fused, residual_rgb], axis=1)

    # ------------------------------------------------------------------------------------------ internals
    def _jump(self) -> None:
        """A new random training image and crop centre (reset and skip)."""
        half, size = self.config.crop_size // 2, self.config.image_size
        self.image_index = int(self.np_random.integers(len(self.train_images)))
        self.center = (
            int(self.np_random.integers(half, size - half + 1)),
            int(self.np_random.integers(half, size - half + 1)),
        )

    def _move(self, center: tuple[int, int], action: int) -> tuple[int, int]:
        """Move the centre by ``move_step`` in the action's direction, clamped so the crop stays inside."""
        half, size, step = self.config.crop_size // 2, self.config.image_size, self.config.move_step
        dy, dx = MOVES[action]
        return (int(np.clip(center[0] + dy * step, half, size - half)), int(np.clip(center[1] + dx * step, half, size - half)))

    def _take_patch(self) -> tuple[float, float]:
        """Cut the patch at the centre, score it, count it in the history map and queue it for the AE."""
        p = self.config.patch_size
        y, x = self.center[0] - p // 2, self.center[1] - p // 2
        self.last_patch_corner = (y, x)
        patch = self.train_images[self.image_index, y : y + p, x : x + p].transpose(2, 0, 1).astype(np.float32) / 255.0
        r_clone = min(float(sobel_magnitude(patch).mean()) / self.clone_scale, 1.0)
        history = self.history[self.image_index, y : y + p, x : x + p]
        r_cover = -float((history / (history + 1.0)).mean())
        np.add(history, 1, out=history, where=history < np.iinfo(history.dtype).max)  # saturating: no wrap to 0
        self.patch_buffer.append(patch)
        return r_clone, r_cover

    def _train_detector(self, j: int) -> None:
        batch = torch.from_numpy(np.stack(self.patch_buffer))  # (B, 3, p, p)
        self.patch_buffer.clear()
        self.last_ae_loss = self.detector.ae_update(batch)
        if j >= self.config.predictor_freeze_steps:
            for _ in range(self.detector.config.predictor_updates_per_ae_update):
                self.last_pred_loss = self.detector.predictor_update()

    def _patch_defect_share(self) -> float:
        """The share of defective pixels (ground truth: non-zero only in contaminated images) in the last patch."""
        assert self.last_patch_corner is not None
        (y, x), p = self.last_patch_corner, self.config.patch_size
        return float(self.category.masks[self.split.train[self.image_index], y : y + p, x : x + p].mean())

    def move_defect_probabilities(self) -> np.ndarray:
        """float64 (8,): for each move (actions 0-7) from the current centre, the highest defect probability of the
        detector's current anomaly map inside the patch it would take (what ``reward="defect_avoid"`` charges; a
        heuristic sampler reads it too)."""
        defect_map, p = self._defect_map(self.image_index), self.config.patch_size
        corners = [(cy - p // 2, cx - p // 2) for cy, cx in (self._move(self.center, a) for a in range(len(MOVES)))]
        return np.array([float(defect_map[y : y + p, x : x + p].max()) for y, x in corners])

    def _action_defect_probability(self, action: int) -> float:
        """``q`` of an action from the current state: its move's entry of :meth:`move_defect_probabilities`; for a
        skip, their mean."""
        probabilities = self.move_defect_probabilities()
        return float(probabilities.mean() if action == SKIP else probabilities[action])

    def _defect_map(self, index: int) -> np.ndarray:
        """The detector's anomaly map of one training image, float32 (S, S) in [0, 1]; cached until the image, the AE
        or the predictor changes (at most once per AE update on an image)."""
        key = (index, self.detector.ae_version, self.detector.predictor_updates)
        if self._defect_cache is None or self._defect_cache[0] != key:
            self._defect_cache = (key, self.detector.anomaly_map(self.train_images[index : index + 1])[0])
        return self._defect_cache[1]

    def _history_map(self, index: int) -> np.ndarray:
        counts = self.history[index].astype(np.float32)
        return counts / (counts + 1.0)

    def _residual(self, index: int) -> np.ndarray:
        """The current AE's residual map of one training image, scaled to [0, 1]; cached per AE version."""
        version = self.detector.ae_version
        if self._residual_cache is None or self._residual_cache[:2] != (index, version):
            residual = self.detector.residual_map(self.train_images[index : index + 1])[0]
            self._residual_cache = (index, version, np.clip(residual / self.residual_scale, 0.0, 1.0))
        return self._residual_cache[2]

    def _observation(self) -> np.ndarray:
        half = self.config.crop_size // 2
        cy, cx = self.center
        window = (slice(cy - half, cy + half), slice(cx - half, cx + half))
        i = self.image_index
        rgb = self.train_images[i][window].transpose(2, 0, 1).astype(np.float32) / 255.0  # (3, crop, crop)
        history = self._history_map(i)[window][None]
        if self.config.observation == "rgb_history":
            return np.concatenate([rgb, history]).astype(np.float32)
        fused = self.fused[i][window][None].astype(np.float32) / 255.0
        residual = self._residual(i)[window][None]
        return np.concatenate([rgb, fused, history, residual]).astype(np.float32)  # (6, crop, crop)

    def _info(
        self, r_clone: float, r_cover: float, beta: float | None = None, r_pred: float | None = None, step: int | None = None
    ) -> dict[str, Any]:
        return {
            "r_clone": r_clone,
            "r_cover": r_cover,
            "r_pred": -min(self.last_pred_loss, 1.0) if r_pred is None else r_pred,
            "beta": self.beta if beta is None else beta,
            "alpha": self.detector.alpha,
            "pred_lr": self.detector.pred_lr,
            "ae_loss": self.last_ae_loss,
            "pred_loss": self.last_pred_loss,
            "global_step": self.global_step if step is None else step,
            "episode_step": self.episode_step,
            "image_index": self.image_index,
            "center": self.center,
            "patch": self.last_patch_corner,
            "rl_feedback": (self.global_step if step is None else step) >= self.config.feedback_start_steps,
        }

    # -------------------------------------------------------------------------------------- checkpointing
    def _snapshot(self) -> dict[str, Any]:
        """A copy of the training state (detector, history, counters, AE buffer) to restart from."""
        return {
            "detector": copy.deepcopy(self.detector.state_dict()),
            "history": self.history.copy() if self.history.any() else None,  # None: all zero (saves N*S*S*2 bytes)
            "global_step": self.global_step,
            "last_pred_loss": self.last_pred_loss,
            "last_ae_loss": self.last_ae_loss,
            "patch_buffer": [p.copy() for p in self.patch_buffer],
        }

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.detector.load_state_dict(copy.deepcopy(snapshot["detector"]))
        history = snapshot["history"]
        self.history = np.zeros_like(self.history) if history is None else history.copy()
        self.global_step = snapshot["global_step"]
        self.last_pred_loss, self.last_ae_loss = snapshot["last_pred_loss"], snapshot["last_ae_loss"]
        self.patch_buffer = [p.copy() for p in snapshot["patch_buffer"]]
        self._residual_cache = self._defect_cache = None

    def state_dict(self) -> dict[str, Any]:
        """Everything the training process needs to resume exactly: detector (with its predictor's pool), history,
        scales, counters, AE buffer, the sampler's position and the random streams of the env and its action space."""
        return {
            "config": asdict(self.config),
            "detector": self.detector.state_dict(),
            "detector_pool": self.detector.pool_state(),
            "position": {
                "image_index": self.image_index,
                "center": list(self.center),
                "episode_step": self.episode_step,
                "last_patch_corner": None if self.last_patch_corner is None else list(self.last_patch_corner),
            },
            "np_random": generator_state(self._np_random),
            "action_space_rng": generator_state(getattr(self.action_space, "_np_random", None)),
            "history": torch.from_numpy(self.history.astype(np.int32)),
            "fused": torch.from_numpy(self.fused),
            "clone_scale": self.clone_scale,
            "residual_scale": self.residual_scale,
            "global_step": self.global_step,
            "last_pred_loss": self.last_pred_loss,
            "last_ae_loss": self.last_ae_loss,
            "patch_buffer": torch.from_numpy(np.stack(self.patch_buffer)) if self.patch_buffer else torch.zeros(0),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {
            "contamination": 0.0,
            "contamination_reserve": 0.0,
            "vetted_normal_pool": False,
            "vetted_predictor_data": False,
        }
        saved.update(state.get("config", {}))
        split_keys = (*DATA_KEYS, "seed")
        for key in (*split_keys, "patch_size"):
            if key in saved and saved[key] != getattr(self.config, key):
                raise ValueError(f"state was saved with {key}={saved[key]!r}, this env has {getattr(self.config, key)!r}")
        self.detector.load_state_dict(state["detector"])
        if "detector_pool" in state:
            self.detector.load_pool_state(state["detector_pool"])
        self.history = state["history"].numpy().astype(np.uint16)
        self.fused = state["fused"].numpy().copy()
        self.clone_scale, self.residual_scale = float(state["clone_scale"]), float(state["residual_scale"])
        self.global_step = int(state["global_step"])
        self.last_pred_loss, self.last_ae_loss = float(state["last_pred_loss"]), float(state["last_ae_loss"])
        buffer = state["patch_buffer"]
        self.patch_buffer = [b.numpy() for b in buffer] if buffer.ndim == 4 else []
        self._residual_cache = self._defect_cache = None
        if "position" in state:  # the sampler continues where it was, on the same random stream
            position = state["position"]
            self.image_index, self.episode_step = int(position["image_index"]), int(position["episode_step"])
            self.center = (int(position["center"][0]), int(position["center"][1]))
            corner = position["last_patch_corner"]
            self.last_patch_corner = None if corner is None else (int(corner[0]), int(corner[1]))
            self._np_random = set_generator_state(state["np_random"])
            self.action_space._np_random = set_generator_state(state["action_space_rng"])
        self.warmed_up = True
        self._restart_point = self._snapshot()  # a seeded reset after a resume restarts from the checkpoint

    def save_state(self, path: str | Path) -> None:
        """Write :meth:`state_dict` atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load_state(self, path: str | Path) -> None:
        """Read a file written by :meth:`save_state`; a corrupt or foreign file raises a one-line ValueError."""
        path = Path(path)
        try:
            # To the CPU: the detector's RNG state must stay a CPU ByteTensor, and load_state_dict moves the networks
            # and optimiser states to this env's device (which may differ from the one the run was saved on).
            state = torch.load(path, map_location="cpu", weights_only=True)
            expected = {"detector", "history", "fused", "global_step"}
            if not isinstance(state, dict) or not expected <= set(state):
                raise ValueError("missing keys")
        except FileNotFoundError:
            raise ValueError(f"env state '{path}' not found (expected a file written by MVTecPatchEnv.save_state)") from None
        except Exception as error:  # noqa: BLE001 - any failure here means the file is not a usable state
            raise ValueError(f"env state '{path}' is corrupt or not an MVTecPatch-v0 state ({type(error).__name__})") from None
        try:
            self.load_state_dict(state)
        except ValueError as error:
            raise ValueError(f"env state '{path}' does not fit this env: {error}") from None
