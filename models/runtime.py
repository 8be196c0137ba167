"""Where and how torch runs: one device check for every entry point, and the settings that make a seeded run repeatable.

A seeded CPU run is bit-reproducible only if every floating-point reduction is split the same way each time. Torch
splits its intra-op work (convolution backward, matmul, ``sum``) over the threads of its OpenMP/MKL pools, so the
summation order, and with it the last bits of every gradient, depends on the thread count: 1 and 2 threads give
different gradients for the sampler's policy update (measured). The default count is the number of cores, and
``OMP_NUM_THREADS`` in the caller's environment changes it, so the same command gave different results on different
machines or launchers. :func:`reproducible` pins the count (recorded in config.yml) and turns on torch's deterministic
algorithms. Results are bit-identical on one machine type with one torch build; another CPU (instruction set) or
torch version picks other kernels, and then only statistically equivalent.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_THREADS = 1  # bit-reproducible for any load, and as fast as 2 for these small networks on a busy 2-core machine


def check_device(device: str) -> str:
    """Validate a torch device string the way torch spells it: ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

    Args:
        device: the device string.

    Returns:
        ``device`` unchanged.

    Raises:
        ValueError: not a torch device, or not present on this machine (the message lists the valid choices).
    """
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    choices = ["cpu", *(["cuda", *(f"cuda:{i}" for i in range(n_cuda))] if n_cuda else [])]
    if _mps_available():
        choices.append("mps")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is not None and parsed.type == "cpu":
        return device
    if parsed is not None and parsed.type == "cuda" and n_cuda and (parsed.index is None or parsed.index < n_cuda):
        return device
    if parsed is not None and parsed.type == "mps" and _mps_available() and not parsed.index:
        return device
    raise ValueError(f"device={device!r} is invalid or not available on this machine (valid here: {', '.join(choices)})")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


@contextlib.contextmanager
def reproducible(threads: int = DEFAULT_THREADS, device: str = "cpu") -> Iterator[None]:
    """Run a block with a fixed torch thread count and deterministic algorithms; restore both afterwards.

    Args:
        threads: intra-op threads (OpenMP and MKL); a seeded run repeats bit for bit only with the same count.
        device: the run's device; on CUDA, cuBLAS needs a fixed workspace to be deterministic (set if unset).

    Raises:
        ValueError: ``threads < 1``.
    """
    if threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads}")
    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    old_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    # warn_only on GPUs: a CUDA op without a deterministic kernel warns instead of stopping the run
    torch.use_deterministic_algorithms(True, warn_only=not device.startswith("cpu"))
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic, warn_only=old_warn_only)


def atomic_write(path: str | os.PathLike[str], write: Callable[[io.BufferedWriter], object]) -> None:
    """``write(handle)`` to a temporary file in ``path``'s folder, then a rename onto ``path``: a reader, or a process
    killed midway, finds the old file or the new one, never part of one (the temporary file is removed on an error).
    """
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: object, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, then a rename: an interruption never leaves half a file."""
    atomic_write(path, lambda handle: torch.save(_interned(obj), handle))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` (UTF-8) written to ``path`` as :func:`atomic_write` does."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def _interned(value: Any) -> Any:
    """``value`` with every string interned, in containers of the same types. Pickle writes an object it has already
    written as a reference, by identity: without this a string read from config.yml and the same string from the code
    would give files of the same content different bytes (a resumed run's weights would differ from the uninterrupted
    run's in their bytes, not in their values)."""
    if isinstance(value, str):
        return sys.intern(value)
    if type(value) in (dict, OrderedDict):
        out = type(value)((_interned(k), _interned(v)) for k, v in value.items())
        if hasattr(value, "__dict__"):  # a state dict's _metadata
            out.__dict__.update(value.__dict__)
        return out
    if type(value) in (list, tuple):
        return type(value)(_interned(v) for v in value)
    return value


def plain(value: object) -> object:
    """Tuples -> lists, recursively (dicts kept): safe for ``torch.load(weights_only=True)`` and YAML."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")  # numpy's, by the name a state records


def generator_state(generator: Any) -> dict[str, Any] | None:
    """A numpy ``Generator``'s state as plain values, for a checkpoint (None for None)."""
    return None if generator is None else generator.bit_generator.state


def set_generator_state(state: dict[str, Any] | None) -> Any:
    """The numpy ``Generator`` that :func:`generator_state` recorded (None for None).

    Raises:
        ValueError: ``state`` names an unknown bit generator.
    """
    import numpy as np

    if state is None:
        return None
    name = state.get("bit_generator")
    if name not in BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r} (valid: {', '.join(BIT_GENERATORS)})")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = state
    return np.random.Generator(bit_generator)
