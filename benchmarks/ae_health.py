"""Is the AE alive? Prints the range of its reconstructions and the size of its gradients on training images.

A saturated output sigmoid reconstructs every pixel as 0 (or 1) and passes no gradient: the "loss profile" is then the
image itself and the sampler's patches cannot change anything. Without BatchNorm a sigmoid output saturates on a dark
category such as tire within the first pre-training updates; the default's linear output (``ae.output: linear``) has
nothing to saturate (docs/design.md).

    python -m benchmarks.ae_health --run runs/.../MVTecPatch-v0_1            # a trained run's best detector
    python -m benchmarks.ae_health --data-root ../shared/data --category tire --epochs 3   # pre-training, epoch by epoch
    python -m benchmarks.ae_health --data-root ../shared/data --category tire --epochs 3 --set ae.output=sigmoid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch


def health(detector: Any, images: torch.Tensor) -> str:
    """Output range (eval mode) and the largest gradient of the MSE (train mode) on ``images`` (B, 3, H, W) in [0, 1]."""
    ae = detector.ae
    ae.eval()
    with torch.no_grad():
        out = ae(images)  # (B, 3, H, W)
    ae.train()
    ae.zero_grad(set_to_none=True)
    loss = torch.mean((ae(images) - images) ** 2)
    loss.backward()
    grad = max(float(p.grad.abs().max()) for p in ae.parameters() if p.grad is not None)
    ae.zero_grad(set_to_none=True)
    span = f"output {float(out.min()):.3g}..{float(out.max()):.3g}  image mean {float(images.mean()):.3f}"
    return f"{span}  mse {float(loss.detach()):.5f}  max grad {grad:.3g}"


def main(argv: list[str] | None = None) -> int:
    from agents.hyperparams_opt import deep_merge
    from agents.run_config import load_preset
    from benchmarks.overrides import parse_sets
    from envs.config import MVTecPatchConfig, detector_config
    from envs.data import load_env_data
    from evaluate import load_run
    from models.detector import build_detector

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a train.py run folder: check its best detector")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--category", default=None)
    parser.add_argument("--preset", default="default", help="env.yml preset for a fresh detector (without --run)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="K=V", help="env or DetectorConfig fields (dotted: ae.output=sigmoid)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="pre-training epochs to follow (without --run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=8, help="training images to check (256 px)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        if args.run is not None:
            _, category, split, detector = load_run(Path(args.run), args.data_root, args.category)
        else:
            env_kwargs, det_kwargs = parse_sets(args.set)
            overrides = {**env_kwargs, "detector": det_kwargs} if det_kwargs else env_kwargs
            preset = deep_merge(load_preset("random", "MVTecPatch-v0", args.preset)["env_kwargs"], overrides)
            config = MVTecPatchConfig.from_kwargs(**preset, data_root=args.data_root, category=args.category, seed=args.seed)
            options = detector_config(config)  # a bad --set value stops here, before the data are read
            category, split = load_env_data(config)
            detector = build_detector(options, category, split, seed=config.seed)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    images = torch.from_numpy(category.images[split.train][: args.images]).permute(0, 3, 1, 2).float() / 255.0
    if args.run is not None:
        print(f"{args.run}: {health(detector, images)}")
        return 0
    print(f"initialised: {health(detector, images)}", flush=True)
    for epoch in range(1, args.epochs + 1):
        detector.pretrain_ae(epochs=1)
        print(f"after pre-training epoch {epoch}: {health(detector, images)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
