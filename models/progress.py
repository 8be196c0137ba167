"""Progress for long loops: a tqdm bar on a terminal, and otherwise a log line every 5% or 60 s (done / total, rate,
ETA, the latest loss), so that a log file never goes silent for long (the warm-up, the RL steps, a baseline)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = ["Progress", "ProgressLine"]


class ProgressLine:
    """A log line every ``every_s`` seconds or ``every`` units, whichever comes first: done / total, rate, ETA and
    the latest validation metrics (what a progress bar shows, for output that goes to a file).

    Args:
        total: the run's total (env steps or updates; a resumed run counts from its checkpoint).
        unit: what is counted ("step", "update"); validation records count it under ``count_key``.
        every_s: seconds between lines; every: units between lines (None: 5% of ``total``).
    """

    def __init__(
        self, total: int, unit: str = "step", count_key: str = "timesteps", every_s: float = 60.0, every: int | None = None
    ) -> None:
        self.total, self.unit, self.count_key, self.every_s = total, unit, count_key, every_s
        self.every = every or max(total // 20, 1)
        self.start(0)

    def start(self, done: int) -> None:
        self._start_time = self._last_time = time.perf_counter()
        self._start_done = self.last_done = done

    def maybe_log(self, done: int, history: list[dict[str, float]] | None = None, extra: str = "", prefix: str = "") -> None:
        now = time.perf_counter()
        if now - self._last_time >= self.every_s or done - self.last_done >= self.every:
            self.log(done, history, extra, now, prefix)

    def log(
        self,
        done: int,
        history: list[dict[str, float]] | None = None,
        extra: str = "",
        now: float = 0.0,
        prefix: str = "",
    ) -> None:
        """One line now; ``prefix`` names the phase ("predictor warm-up: update 150/3000 ...")."""
        now = now or time.perf_counter()
        self._last_time, self.last_done = now, done
        rate = (done - self._start_done) / max(now - self._start_time, 1e-9)
        eta = max(self.total - done, 0) / rate if rate > 0 else float("inf")
        line = f"{prefix}: " if prefix else ""
        line += f"{self.unit} {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%), "
        line += f"{rate:.2f} {self.unit}s/s, ETA {_duration(eta)}{extra}"
        if history:
            latest = history[-1]
            line += f"; validation at {latest[self.count_key]}: " + ", ".join(
                f"{key} {latest[key]:.4f}" for key in ("pixel_auroc", "pixel_f1max", "pixel_aupro") if key in latest
            )
        logger.info(line)


def _duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``."""
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """``range(total)`` with progress: a tqdm bar when ``bar``, else :class:`ProgressLine` log lines headed ``desc``.

    ``set_postfix(loss=...)`` shows on the bar and at the end of the next log line, as with tqdm.
    """

    def __init__(self, total: int, desc: str, bar: bool, unit: str = "update") -> None:
        self.total, self.desc, self.bar = total, desc, bar
        self._tqdm = tqdm(range(total), desc=desc, disable=not bar) if bar else None
        self._line = None if bar else ProgressLine(total, unit)
        self._postfix = ""

    def __iter__(self) -> Iterator[int]:
        if self._tqdm is not None:
            yield from self._tqdm
            return
        assert self._line is not None
        logger.info("%s: %d %ss", self.desc, self.total, self._line.unit)  # a phase's first line comes at its start
        self._line.start(0)
        for i in range(self.total):
            yield i
            if i + 1 == self.total:
                self._line.log(i + 1, extra=self._postfix, prefix=self.desc)
            else:
                self._line.maybe_log(i + 1, extra=self._postfix, prefix=self.desc)

    def set_postfix(self, **values: Any) -> None:
        if self._tqdm is not None:
            self._tqdm.set_postfix(**values)
        else:
            self._postfix = "; " + ", ".join(f"{key} {value}" for key, value in values.items())
