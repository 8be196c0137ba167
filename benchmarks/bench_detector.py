"""Speed and memory of the detector core at the paper's sizes, on synthetic data.

Measures, at 256x256 images, 64x64 patches, batch 32 and a pool of 40 images: one AE update, one refresh of
the pool's loss profiles, one predictor update, one full AE + refresh + predictor cycle (what an env step
does when its mini-batch is full), the predictor's logits resized to the image and its decoder's features
upsampled, each back-propagated (torch's interpolate against ``models.resize.resize_bilinear``), the AE's loss
profiles of a chunk of images with torch's reflect padding and upsampling and with ``models.padding``'s copies,
inference per image at batch 1 and batched, in PyTorch and, exported (models.export), in onnxruntime with the
largest difference between their maps, and the peak RSS.

Targets on 2 CPU cores: full cycle <= 1.2 s, inference <= 30 ms per image at batch 1, peak RSS <= 3 GiB
for a 300-image category.

    python -m benchmarks.bench_detector [--train-images 300] [--pool 40] [--repeats 10] [--threads 2] [--batch 16]
    python -m benchmarks.bench_detector --set map_global_weight=0.1   # DetectorConfig fields over the preset's
    python -m benchmarks.bench_detector --device cuda                  # on a GPU (each timing waits for its kernels)
    python -m benchmarks.bench_detector --against ../main-worktree     # then another checkout's code, and the ratios

Run it on an otherwise idle machine: with 2 OpenMP threads, CPU contention from other processes can slow
small convolutions down many times over.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from agents.run_config import load_preset
from models import padding
from models.detector import Detector, DetectorConfig
from models.resize import resize_bilinear


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2, device: str = "cpu") -> tuple[float, float, float]:
    """(median, min) wall time and median CPU time of ``fn`` in milliseconds.

    The CPU time of this process is what a one-thread run costs whatever else the machine is doing; on a busy
    machine quote it beside the wall time. On CUDA each call is followed by a synchronisation: its kernels count."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return statistics.median(times), min(times), statistics.median(cpu)


def onnx_inference(
    detector: Detector, one: np.ndarray, many: np.ndarray, args: argparse.Namespace
) -> dict[str, tuple[float, float, float]]:
    """The exported graph (:mod:`models.export`) in onnxruntime, ``args.threads`` intra-op threads: per-image times at
    batch 1 and batch ``len(many)``, and the largest difference from PyTorch's maps (printed)."""
    import tempfile

    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime is not installed: no ONNX timings (pip install -e '.[export]')")
        return {}
    from models.export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(detector, args.size, path)
        options = onnxruntime.SessionOptions()
        if args.threads > 0:
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0  # (N, 3, S, S)
        return session.run(None, {"images": x})[0]

    difference = float(np.abs(run(many) - detector.anomaly_map(many)).max())
    print(f"onnxruntime {onnxruntime.__version__}: max abs difference from PyTorch's maps {difference:.2e}")
    results = {"onnxruntime inference, batch 1 (per image)": timed(lambda: run(one), args.repeats)}
    med, lo, cpu = timed(lambda: run(many), max(3, args.repeats // 3))
    results[f"onnxruntime inference, batch {len(many)} (per image)"] = (med / len(many), lo / len(many), cpu / len(many))
    return results


def compiled_inference(detector: Detector, one: np.ndarray, args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    """The whole inference graph (:class:`models.export.InferenceGraph`) under ``torch.compile`` (inductor, weights
    frozen as constants: PyTorch's CPU inference recipe) at batch 1, and its largest difference from the eager graph's
    maps (printed). The first call compiles (tens of seconds), outside the timing."""
    import torch._inductor.config as inductor

    from models.export import InferenceGraph

    graph = InferenceGraph(detector).eval()
    x = torch.from_numpy(np.ascontiguousarray(one.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)  # (1, 3, S, S)
    inductor.freezing = True
    compiled = torch.compile(graph)
    with torch.inference_mode():
        difference = float((compiled(x) - graph(x)).abs().max())
    print(f"torch.compile (inductor, frozen): max abs difference from the eager graph's maps {difference:.2e}")

    def run(module: torch.nn.Module) -> None:
        with torch.inference_mode():
            module(x)

    return {
        "inference graph, eager, batch 1": timed(lambda: run(graph), args.repeats),
        "inference graph, torch.compile, batch 1": timed(lambda: run(compiled), args.repeats),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=300, help="normal training images")
    parser.add_argument("--pool", type=int, default=40, help="predictor pool images (half of them get a defect mask)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions per measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (0: leave torch's default)")
    parser.add_argument("--batch", type=int, default=16, help="images per anomaly_map call in the batched measurement")
    parser.add_argument("--inference-batch", type=int, default=0, help="images per forward pass (0: the config's default)")
    parser.add_argument("--no-channels-last", action="store_true", help="use the contiguous memory format")
    parser.add_argument("--preset", default="default", help="detector settings of this preset (agents/hyperparams/env.yml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="K=V", help="DetectorConfig fields over the preset's")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    parser.add_argument("--no-onnx", action="store_true", help="skip the exported model's onnxruntime timings")
    parser.add_argument("--compile", action="store_true", help="also time the inference graph under torch.compile (CPU)")
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="then run the same measurements in another checkout (e.g. a git worktree of main) and print the ratios",
    )
    args = parser.parse_args(argv)
    if args.against is not None and not (args.against / "benchmarks" / "bench_detector.py").is_file():
        raise SystemExit(
            f"error: --against '{args.against}' is not a checkout of this project (no benchmarks/bench_detector.py)"
        )
    from models.runtime import check_device

    try:
        check_device(args.device)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    from agents.hyperparams_opt import deep_merge
    from benchmarks.overrides import parse_sets

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    s = args.size
    train = rng.integers(0, 256, size=(args.train_images, s, s, 3), dtype=np.uint8)
    pool = rng.integers(0, 256, size=(args.pool, s, s, 3), dtype=np.uint8)
    masks = np.zeros((args.pool, s, s), dtype=bool)
    masks[: args.pool // 2, s // 4 : s // 4 + 20, s // 3 : s // 3 + 30] = True
    detector_kwargs = load_preset("random", "MVTecPatch-v0", args.preset)["env_kwargs"].get("detector") or {}
    detector_kwargs = deep_merge(detector_kwargs, parse_sets(args.set)[1])
    try:
        config = DetectorConfig(channels_last=not args.no_channels_last, device=args.device, **detector_kwargs)
    except (TypeError, ValueError) as error:  # an unknown or invalid --set field: one line, not a traceback
        raise SystemExit(f"error: {error}") from None
    if args.inference_batch > 0:
        config.inference_batch_size = args.inference_batch
    detector = Detector(config, train, pool, masks, seed=0)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, images {s}x{s}, train {args.train_images}, "
        f"pool {args.pool}, channels_last {config.channels_last}, preset {args.preset}, device {args.device}"
        + (f", set {' '.join(args.set)}" if args.set else "")
    )
    print(
        f"AE params {sum(p.numel() for p in detector.ae.parameters()):,}, "
        f"predictor params {sum(p.numel() for p in detector.predictor.parameters()):,}"
    )

    results: dict[str, tuple[float, float, float]] = {}
    patches = detector.random_patches(config.ae_batch_size)

    timed_here = functools.partial(timed, device=args.device)
    results["AE update (batch 32, 64x64)"] = timed_here(lambda: detector.ae_update(patches), args.repeats)

    def refresh() -> None:
        detector._profiles_version = -1  # pretend the profiles are stale, so that the refresh recomputes all of them
        detector.refresh_profiles()

    n_pool = args.pool + config.synthetic_pool_size
    name = f"profile refresh (pool {n_pool}, incl. {config.synthetic_pool_size} new synthetic)"
    results[name] = timed_here(refresh, args.repeats)
    results[f"predictor update (batch {config.pred_batch_size})"] = timed_here(detector.predictor_update, args.repeats)

    def cycle() -> None:
        # what the env does per AE mini-batch (the profiles are refreshed every profile_refresh_every cycles)
        detector.ae_update(detector.random_patches(config.ae_batch_size))
        for _ in range(config.predictor_updates_per_ae_update):
            detector.predictor_update()

    name = f"full cycle (AE + refresh + {config.predictor_updates_per_ae_update} predictor)"
    results[name] = timed_here(cycle, args.repeats)
    one = pool[:1]
    # the predictor's last step, its logits resized to the image, forward + backward: torch's kernel and ours
    logits = torch.randn(config.pred_batch_size, 1, s // 2, s // 2, device=args.device)  # (B, 1, H/2, W/2)
    grad = torch.randn(config.pred_batch_size, 1, s, s, device=args.device)  # (B, 1, H, W)

    def resize_step(resize: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]) -> None:
        resize(logits.clone().requires_grad_(True), (s, s)).backward(grad)

    def torch_resize(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.nn.functional.interpolate(z, size=size, mode="bilinear", align_corners=False)

    batch = f"{config.pred_batch_size} maps"
    results[f"logits' resize + backward, torch's ({batch})"] = timed_here(lambda: resize_step(torch_resize), 5 * args.repeats)
    results[f"logits' resize + backward, resize_bilinear ({batch})"] = timed_here(
        lambda: resize_step(resize_bilinear), 5 * args.repeats
    )
    widths = getattr(detector.predictor, "widths", [])  # per encoder level; the decoder exists from two levels on
    if len(widths) >= 2:
        # the decoder's last upsampling (H/4 -> H/2), its gradient a slice of the concatenation with the skip
        memory = torch.channels_last if config.channels_last else torch.contiguous_format
        c_up, c_skip = widths[1], widths[0]
        features = torch.randn(config.pred_batch_size, c_up, s // 4, s // 4, device=args.device)  # (B, c_up, H/4, W/4)
        features = features.contiguous(memory_format=memory)
        concat_grad = torch.randn(config.pred_batch_size, c_up + c_skip, s // 2, s // 2, device=args.device)
        concat_grad = concat_grad.contiguous(memory_format=memory)  # (B, c_up + c_skip, H/2, W/2)

        def decoder_resize_step(resize: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]) -> None:
            resize(features.clone().requires_grad_(True), (s // 2, s // 2)).backward(concat_grad[:, :c_up])

        batch = f"{config.pred_batch_size}x{c_up}"
        results[f"decoder's resize + backward, torch's ({batch})"] = timed_here(
            lambda: decoder_resize_step(torch_resize), 5 * args.repeats
        )
        results[f"decoder's resize + backward, resize_bilinear ({batch})"] = timed_here(
            lambda: decoder_resize_step(resize_bilinear), 5 * args.repeats
        )
    # the AE's loss profiles of a refresh-sized chunk: torch's reflect pad and nearest upsampling, then the copy path
    chunk = pool[: config.inference_batch_size]
    for label, enabled in (("torch's", False), ("models.padding's", True)):
        padding.ENABLED = enabled
        results[f"loss profiles, {label} padding ({len(chunk)} images)"] = timed_here(
            lambda: detector.loss_profiles(chunk), args.repeats
        )
    results["inference, batch 1 (per image)"] = timed_here(lambda: detector.anomaly_map(one), args.repeats)
    many = np.concatenate([pool] * (args.batch // len(pool) + 1))[: args.batch]
    med, lo, cpu = timed_here(lambda: detector.anomaly_map(many), max(3, args.repeats // 3))
    name = f"inference, {args.batch} images in chunks of {config.inference_batch_size} (per image)"
    results[name] = (med / args.batch, lo / args.batch, cpu / args.batch)

    if not args.no_onnx:
        results.update(onnx_inference(detector, one, many, args))
    if args.compile:
        results.update(compiled_inference(detector, one, args))

    for name, (med, lo, cpu) in results.items():
        print(f"{name:55s} median {med:8.1f} ms   min {lo:8.1f} ms   CPU {cpu:8.1f} ms")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    print(f"{'peak RSS':55s} {peak:8.2f} GiB")
    if args.against is not None:
        compare_with(args.against, [a for a in (argv if argv is not None else sys.argv[1:])], results)


LINE = re.compile(r"^(?P<name>.+?)\s+median\s+(?P<med>[\d.]+) ms\s+min\s+(?P<lo>[\d.]+) ms\s+CPU\s+(?P<cpu>[\d.]+) ms$")


def without_against(argv: list[str]) -> list[str]:
    """``argv`` less ``--against X`` / ``--against=X``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--against":
            skip = True
        elif not a.startswith("--against="):
            out.append(a)
    return out


def compare_with(checkout: Path, argv: list[str], ours: dict[str, tuple[float, float, float]]) -> None:
    """Run this benchmark with ``argv`` in ``checkout`` (its own code, this interpreter) and print, for every
    measurement both print, the other's median and CPU time and how many times faster this checkout is."""
    import subprocess

    command = [sys.executable, "-m", "benchmarks.bench_detector", *without_against(argv)]
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    print(f"\n--against {checkout}: {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"error: the benchmark failed in '{checkout}': {last}")
    theirs = {m["name"].strip(): (float(m["med"]), float(m["cpu"])) for m in map(LINE.match, done.stdout.splitlines()) if m}
    for line in done.stdout.splitlines():
        if line.startswith(("torch ", "onnxruntime ")):
            print(f"  theirs: {line}")
    if not set(theirs) & set(ours):
        raise SystemExit(f"error: '{checkout}' printed no measurement of the same name: nothing to compare")
    heads = ("theirs median", "ours", "x faster", "theirs CPU", "ours", "x faster")
    print(f"{'measurement':55s} {heads[0]:>14s} {heads[1]:>8s} {heads[2]:>9s}   {heads[3]:>10s} {heads[4]:>8s} {heads[5]:>9s}")
    for name, (med, _, cpu) in ours.items():
        if name in theirs:
            t_med, t_cpu = theirs[name]
            speed = f"{t_med:11.1f} ms {med:8.1f} {t_med / med:8.2f}x   {t_cpu:7.1f} ms {cpu:8.1f} {t_cpu / cpu:8.2f}x"
            print(f"{name:55s} {speed}")


if __name__ == "__main__":
    main()
