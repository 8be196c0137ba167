"""Evaluate a training run on its test split: the paper's pixel metrics, F1 at the validation threshold, figures.

    python evaluate.py --run logs/reinforce/MVTecPatch-v0_1                    # the full method
    python evaluate.py --run RUN --method ae                                   # the AE-only baseline, same AE
    python evaluate.py --run RUN --data-root DATA --category grid              # another folder, same protocol
    python evaluate.py --run RUN --images DIR --out maps/                      # maps for unlabelled images
    python evaluate.py --run logs/unet/MVTecPatch-v0_1                         # a baseline's run: the same protocol

Everything is rebuilt from the run's ``config.yml`` (no hyperparameter is repeated here). Writes to ``--out`` (default:
the run folder; ``<run>/ae_baseline`` for ``--method ae``): ``metrics.json``, a row in ``metrics.csv``, ``predictions.png``
(image | prediction | ground truth, like the paper's Fig. 2), ``roc.png`` and ``pr.png``. The weights scored are
``best_detector.pt``, or ``detector.pt`` (with a warning) when a run has no best checkpoint; ``metrics.json`` names them.
Maps for new images (``--images``) need the run folder alone, not the data set it was trained on.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from envs.mvtec import DatasetError
from models.inference import InferenceModel
from models.metrics import compute_metrics, f1_at_threshold, roc_pr_curves
from models.runtime import atomic_write_text, check_device

__all__ = ["compute_metrics", "evaluate_images", "evaluate_run", "predict_maps", "validate", "main"]

logger = logging.getLogger("evaluate")

METHODS = ("detector", "ae")  # the run's model (the full method, or a baseline's network) | the AE-only residual


def predict_maps(detector: Any, images: np.ndarray, method: str) -> np.ndarray:
    """Anomaly maps float32 (N, H, W) for uint8 (N, H, W, 3) images: predictor probabilities or the AE residual."""
    if method == "detector":
        return detector.anomaly_map(images)
    if method == "ae":
        if not hasattr(detector, "residual_map"):
            raise ValueError(f"--method ae needs a run of the method: a {type(detector).__name__} has no autoencoder")
        return detector.residual_map(images)
    raise ValueError(f"unknown method {method!r} (valid: {', '.join(METHODS)})")


def evaluate_images(
    detector: Any, images: np.ndarray, masks: np.ndarray, method: str, image_labels: list[bool] | np.ndarray | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``compute_metrics`` and the maps for a labelled set of images.

    ``image_labels`` (True: defective, from the image's folder) sets the image-level labels; None: from the masks.
    """
    maps = predict_maps(detector, images, method)
    labels = None if image_labels is None else np.asarray(image_labels, dtype=bool)
    return compute_metrics(maps, masks, image_labels=labels), maps


def validate(
    detector: Any, images: np.ndarray, masks: np.ndarray, image_labels: list[bool] | np.ndarray | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate_images` of the detector's own maps on the validation split (what picks the best checkpoint)."""
    return evaluate_images(detector, images, masks, "detector", image_labels)


BEST_WEIGHTS, LAST_WEIGHTS = "best_detector.pt", "detector.pt"  # best validation F1max | the end of training


def run_weights(run_dir: Path) -> Path:
    """The weights that stand for a run: ``best_detector.pt``, or ``detector.pt`` where validation never saved a best
    (``--eval-freq 0``, or a split without validation defects).

    Raises:
        ValueError: neither file exists.
    """
    for name in (BEST_WEIGHTS, LAST_WEIGHTS):
        if (run_dir / name).is_file():
            return run_dir / name
    raise ValueError(f"'{run_dir}' has no detector weights (expected {BEST_WEIGHTS} or {LAST_WEIGHTS}: is training done?)")


def _loaded(detector: Any, weights: Path, load: bool = True) -> Any:
    """``detector`` with ``weights`` loaded (``load``), noting in the log when they are not the best checkpoint."""
    if weights.name != BEST_WEIGHTS:
        logger.warning("%s has no %s: using the last weights, %s", weights.parent, BEST_WEIGHTS, weights.name)
    if load:
        detector.load_weights(weights)
    return detector


def load_run(
    run_dir: Path, data_root: str | None = None, category: str | None = None, device: str = "cpu"
) -> tuple[dict, Any, Any, Any]:
    """The run's config, the category and split it (or ``data_root``/``category``) gives, and its best model: the
    method's detector, or a baseline's trainer (both have ``anomaly_map`` and ``load_weights``) with the weights of
    :func:`run_weights`."""
    from agents.run_config import read_config
    from envs.config import MVTecPatchConfig, detector_config
    from envs.data import load_data, load_env_data
    from models.baselines import build_baseline
    from models.detector import build_detector

    config = read_config(run_dir)
    env_kwargs = {**config["env_kwargs"], "device": device}
    if data_root is not None or category is not None:
        if data_root is None or category is None:
            raise ValueError("--data-root and --category go together (a folder and a category under it)")
        env_kwargs.update(data_root=str(Path(data_root).resolve()), category=category)
    method = config.get("method", "sampler")
    if method == "sampler":
        env_config = MVTecPatchConfig.from_kwargs(**env_kwargs)
        data, split = load_env_data(env_config)
        detector: Any = build_detector(detector_config(env_config), data, split, seed=env_config.seed)
    else:  # a baseline: the data protocol alone, an inference-only model
        data, split = load_data(**{k: v for k, v in env_kwargs.items() if k != "device"})
        detector = build_baseline(method, {**config["hyperparams"], "device": device}, int(config.get("seed", 0)))
    return config, data, split, _loaded(detector, run_weights(run_dir))


def load_model(run_dir: Path, device: str = "cpu") -> tuple[dict, Any, int, Path]:
    """The run's config, its best model, the image size it works at and the weights loaded (:func:`run_weights`), from
    the run folder alone: no data is read (the detector's checkpoint holds its config and the global residual's basis;
    a baseline needs its config only).

    Raises:
        ValueError: not a run folder, no weights, or weights without what inference needs and no data to rebuild it.
    """
    from agents.run_config import read_config
    from envs.config import MVTecPatchConfig
    from models.baselines import build_baseline
    from models.detector import Detector

    config = read_config(run_dir)
    weights = run_weights(run_dir)
    method = config.get("method", "sampler")
    if method != "sampler":
        detector = build_baseline(method, {**config["hyperparams"], "device": device}, int(config.get("seed", 0)))
        return config, _loaded(detector, weights), int(config["env_kwargs"].get("image_size", 256)), weights
    image_size = MVTecPatchConfig.from_kwargs(**{**config["env_kwargs"], "device": device}).image_size
    state = Detector.read_checkpoint(weights)
    if state["config"].get("map_global_weight") and not state.get("global_residual"):
        # weights saved before the global residual was first fitted: it needs the training images
        logger.warning("%s lacks the global residual's basis: fitting it on the run's training images", weights)
        config, _, _, detector = load_run(run_dir, device=device)
        return config, detector, image_size, weights
    return config, _loaded(Detector.from_checkpoint(weights, device=device), weights, load=False), image_size, weights


def _heat(x: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.applyColorMap(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]


def _text(canvas: np.ndarray, text: str, x0: int, width: int, y: int) -> None:
    """Write ``text`` centred in columns [x0, x0 + width) of a white strip, shrunk to fit (black, in place)."""
    import cv2

    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.5
    while scale > 0.2 and cv2.getTextSize(text, font, scale, 1)[0][0] > width - 2:
        scale -= 0.05
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    cv2.putText(canvas, text, (x0 + max((width - tw) // 2, 0), y + th // 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)


TITLE_HEIGHT = 16  # pixels of a row title's strip in save_prediction_grid


def save_prediction_grid(
    path: Path,
    images: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    labels: list[str] | None = None,
    rows: int = 8,
    order: list[int] | None = None,
    titles: list[str] | None = None,
) -> None:
    """Fig. 2 of the paper: one row per image, columns image | prediction | ground truth (uint8 PNG), with column
    titles and the prediction's colour scale (inferno, 0 at the bottom).

    Rows are the images of ``order``, or else go round-robin over the defect types (``labels``), so every type is shown
    before any repeats. ``titles`` (one per row) are written in a strip above each row."""
    import cv2

    if order is None:
        labels = labels if labels is not None else ["defect" if m.any() else "good" for m in masks]
        by_type: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            by_type.setdefault(label, []).append(i)
        queues = [by_type[t] for t in sorted(by_type, key=lambda t: (t == "good", t))]
        order = []
        while len(order) < min(rows, len(images)):
            for queue in queues:
                if queue and len(order) < rows:
                    order.append(queue.pop(0))
    scale = max(float(maps.max()), 1e-6) if maps.max() > 1 else 1.0
    size, g = images.shape[1], 4
    gap = np.full((size, g, 3), 255, np.uint8)
    lines = [
        np.concatenate(
            [images[i], gap, _heat(maps[i] / scale), gap, np.repeat(masks[i][..., None] * 255, 3, 2).astype(np.uint8)], axis=1
        )
        for i in order
    ]
    if titles is not None:
        if len(titles) != len(lines):
            raise ValueError(f"titles: one per row, got {len(titles)} for {len(lines)} rows")
        for k, title in enumerate(titles):
            strip = np.full((TITLE_HEIGHT, lines[k].shape[1], 3), 255, np.uint8)
            _text(strip, title, 0, strip.shape[1], TITLE_HEIGHT // 2)
            lines[k] = np.concatenate([strip, lines[k]])
    grid = np.concatenate([np.concatenate([line, np.full((g, line.shape[1], 3), 255, np.uint8)]) for line in lines])
    header = np.full((22, grid.shape[1], 3), 255, np.uint8)
    for column, title in enumerate(("image", "prediction", "ground truth")):
        _text(header, title, column * (size + g), size, 11)
    grid = np.concatenate([header, grid])
    # colour scale: a bar as tall as the first row, labelled with the map values of its ends
    bar_w, label_w = 10, 44
    legend = np.full((grid.shape[0], g + bar_w + label_w, 3), 255, np.uint8)
    ramp = np.linspace(1.0, 0.0, size)[:, None] * np.ones((1, bar_w))  # (size, bar_w), 1 at the top
    top = 22 + (TITLE_HEIGHT if titles is not None else 0)  # the first row's image
    legend[top : top + size, g : g + bar_w] = _heat(ramp)
    for value, y in ((scale, top + 6), (0.0, top + size - 6)):
        _text(legend, f"{value:.3g}", g + bar_w, label_w, y)
    grid = np.concatenate([grid, legend], axis=1)
    cv2.imwrite(str(path), grid[..., ::-1])


def save_curves(out: Path, maps: np.ndarray, masks: np.ndarray, metrics: dict[str, float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = roc_pr_curves(maps, masks)
    for name, (x, y, xlabel, ylabel, label) in {
        "roc": (
            curves["fpr"],
            curves["tpr"],
            "false positive rate",
            "true positive rate",
            f"AUROC {metrics['pixel_auroc']:.3f}",
        ),
        "pr": (curves["recall"], curves["precision"], "recall", "precision", f"AP {metrics['pixel_ap']:.3f}"),
    }.items():
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot(x, y, label=label)
        if name == "roc":
            ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=f"pixel {name.upper()}: {title}")
        ax.legend(loc="lower right" if name == "roc" else "upper right")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)


def append_csv_row(path: Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the CSV file ``path``: the file is rewritten whole and renamed into place, so a kill never
    leaves half a row; a column the file lacks is added (earlier rows leave it empty)."""
    reader = csv.DictReader(io.StringIO(path.read_text() if path.is_file() else "", newline=""))
    rows = [{key: value for key, value in old.items() if key is not None} for old in reader]  # None: cells past the header
    columns = list(dict.fromkeys([*(reader.fieldnames or []), *row]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows([*rows, row])
    atomic_write_text(path, buffer.getvalue())


def evaluate_run(
    run_dir: str | Path,
    method: str = "detector",
    out: str | Path | None = None,
    data_root: str | None = None,
    category: str | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """Test-split metrics of a run (threshold for F1 chosen on the validation split); writes metrics and figures."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (valid: {', '.join(METHODS)})")
    run_dir = Path(run_dir)
    config, data, split, detector = load_run(run_dir, data_root, category, device)
    out = Path(out) if out is not None else (run_dir if method == "detector" else run_dir / "ae_baseline")
    out.mkdir(parents=True, exist_ok=True)

    val_masks = data.masks[split.val]
    val_labels = [data.samples[i].is_anomalous for i in split.val]
    threshold = float("nan")
    if val_masks.any():
        threshold = evaluate_images(detector, data.images[split.val], val_masks, method, val_labels)[0]["f1max_threshold"]
    test_images, test_masks = data.images[split.test], data.masks[split.test]
    # image labels from the folder (test/good or a defect type), not from the resized mask
    test_labels = [data.samples[i].is_anomalous for i in split.test]
    metrics, maps = evaluate_images(detector, test_images, test_masks, method, test_labels)
    metrics["val_threshold"] = threshold
    metrics["f1_at_val_threshold"] = f1_at_threshold(maps, test_masks, threshold) if np.isfinite(threshold) else float("nan")

    record = {
        "category": data.name,
        "method": method if config.get("method", "sampler") == "sampler" else config["method"],
        "algo": config.get("algo"),
        "seed": config.get("seed"),
        "n_test": int(len(split.test)),
        **metrics,
        "weights": run_weights(run_dir).name,  # best_detector.pt, or detector.pt where there is no best
    }
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2))
    append_csv_row(out / "metrics.csv", record)
    labels = [data.samples[i].label for i in split.test]
    save_prediction_grid(out / "predictions.png", test_images, maps, test_masks, labels)
    save_curves(out, maps, test_masks, metrics, f"{data.name} ({method})")
    logger.info(
        "%s on %s test split (%d images): %s",
        method,
        data.name,
        len(split.test),
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
    )
    return metrics


def output_names(files: list[Path]) -> dict[Path, str]:
    """A distinct output name per image: its stem, or ``<stem>_<extension>`` where several files share a stem
    (``x.png``, ``x.jpg`` -> ``x_png``, ``x_jpg``), with a counter if that is taken too."""
    stems = Counter(path.stem for path in files)
    names: dict[Path, str] = {}
    for path in files:
        name = base = path.stem if stems[path.stem] == 1 else f"{path.stem}_{path.suffix[1:]}"
        k = 1
        while name in names.values():
            k += 1
            name = f"{base}_{k}"
        names[path] = name
    return names


def load_detector(run_dir: str | Path, device: str = "cpu", method: str = "detector") -> InferenceModel:
    """A run's best model, ready for new images (:class:`models.inference.InferenceModel`), from the run folder alone.

    Its threshold is the validation F1max threshold saved with ``best_detector.pt`` (None for the last weights or the
    AE residual, which no validation picked).

    Raises:
        ValueError: not a run folder, no weights, or unreadable weights.
    """
    from agents.runs import best_record

    run_dir = Path(run_dir)
    _, model, image_size, weights = load_model(run_dir, device)
    record = best_record(weights) if weights.name == BEST_WEIGHTS and method == "detector" else None
    threshold = None if not record or "f1max_threshold" not in record else float(record["f1max_threshold"])
    return InferenceModel(model, image_size, threshold, method)


def export_run(run_dir: Path, path: Path) -> dict[str, Any]:
    """Export the run's best detector to ONNX (:func:`models.export.export_onnx`) and, where onnxruntime is installed,
    check its maps against PyTorch's on random images (``max_abs_difference``).

    Raises:
        ValueError: a baseline's run (only the method's detector is exported), or no usable weights.
    """
    from models.detector import Detector
    from models.export import export_onnx

    detector = load_detector(run_dir)
    if not isinstance(detector.model, Detector):
        raise ValueError(f"--export takes a run of the method, not of the {type(detector.model).__name__} baseline")
    sidecar = export_onnx(detector.model, detector.image_size, path, detector.threshold)
    report: dict[str, Any] = {"model": str(path), "sidecar": str(path.with_suffix(".json")), **sidecar}
    try:
        import onnxruntime
    except ImportError:
        logger.warning("onnxruntime is not installed: the exported model was not checked (pip install onnxruntime)")
        return report
    images = np.random.default_rng(0).integers(0, 256, (2, detector.image_size, detector.image_size, 3), dtype=np.uint8)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    maps = session.run(None, {"images": x})[0]
    report["max_abs_difference"] = float(np.abs(maps - detector.predict(images).maps).max())
    return report


def predict_folder(run_dir: Path, images_dir: Path, out: Path, method: str, device: str = "cpu") -> dict[str, Any]:
    """Anomaly maps for unlabelled images: ``<name>_map.png`` (grey, 0-255) and ``<name>_overlay.png``, ``name`` from
    :func:`output_names`. Needs the run folder alone (:func:`load_model`). A file that cannot be read is skipped and
    reported, not fatal.

    Returns:
        ``{"maps": out, "images": maps written, "skipped": unreadable files, "weights": the weights used}``.

    Raises:
        ValueError: no image files in ``images_dir``, or none of them readable.
    """
    import cv2

    from envs.mvtec import IMAGE_EXTENSIONS, read_image

    listed = images_dir.iterdir() if images_dir.is_dir() else []
    files = sorted(p for p in listed if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)  # not a folder x.png
    if not files:
        raise ValueError(f"'{images_dir}' has no images (expected a folder of {', '.join(IMAGE_EXTENSIONS)} files)")
    detector = load_detector(run_dir, device, method)
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = 0, []
    for path, name in output_names(files).items():
        try:
            image = read_image(path, detector.image_size)[0]
        except DatasetError as error:
            logger.warning("skipped: %s", error)
            skipped.append(str(path))
            continue
        amap = detector.predict(image).maps[0]
        cv2.imwrite(str(out / f"{name}_map.png"), np.round(np.clip(amap, 0, 1) * 255).astype(np.uint8))
        overlay = (0.55 * image + 0.45 * _heat(amap)).astype(np.uint8)
        cv2.imwrite(str(out / f"{name}_overlay.png"), overlay[..., ::-1])
        written += 1
    if not written:
        raise ValueError(f"none of the {len(files)} images in '{images_dir}' could be read (see the warnings above)")
    if skipped:
        logger.warning("%d of %d images could not be read and were skipped", len(skipped), len(files))
    return {"maps": str(out), "images": written, "skipped": skipped, "weights": run_weights(run_dir).name}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder written by train.py")
    parser.add_argument("--method", default="detector", choices=METHODS, help="full method or the AE-only baseline")
    parser.add_argument("--data-root", default=None, help="evaluate on another folder of MVTec AD categories")
    parser.add_argument("--category", default=None, help="category under --data-root")
    parser.add_argument("--images", default=None, help="a folder of unlabelled images: write their anomaly maps")
    parser.add_argument(
        "--export",
        default=None,
        metavar="MODEL.onnx",
        help="write the run's whole inference graph as ONNX (dynamic batch) and MODEL.json beside it (input size, "
        "normalisation, validation threshold), then check onnxruntime's maps against PyTorch's",
    )
    parser.add_argument("--out", default=None, help="output folder (default: the run folder)")
    parser.add_argument("--device", default="cpu", help="torch device for evaluation: cpu, cuda, cuda:N")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        check_device(args.device)
        if args.export is not None:
            print(json.dumps(export_run(Path(args.run), Path(args.export)), indent=2))
            return 0
        if args.images is not None:
            out = Path(args.out) if args.out else Path(args.run) / "maps"
            print(json.dumps(predict_folder(Path(args.run), Path(args.images), out, args.method, args.device)))
            return 0
        metrics = evaluate_run(args.run, args.method, args.out, args.data_root, args.category, args.device)
        print(json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=2))
        return 0
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
