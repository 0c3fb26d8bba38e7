"""What a node counts and reports: inputs received, reasons for refusals, per-stage times, /diagnostics.

``InputLog`` counts every input and every refusal (by reason) and logs each reason at most once per
throttle period. ``StageTimes`` keeps the last frames' time per stage of the node's work (decode,
pairing, the pipeline's stages, encode, markers, overlay, publish), so /diagnostics and the soak
benchmark show where a frame's time goes. ``labeller_statuses`` turns both into the labeller's four
DiagnosticStatus entries (inputs, pairing, rejected inputs, processing).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np

from . import conversions as conv

OK, WARN = 0, 1
# Stages of the node's own work around the pipeline, in the order a frame goes through them.
DECODE, PAIRING, QUEUE, ENCODE, MARKERS, OVERLAY, PUBLISH = (
    "decode", "pairing", "queue", "encode", "markers", "overlay", "publish")
# Time a frame spends waiting for the worker: reported, but not part of its processing time.
NOT_WORK = (QUEUE,)


class Throttle:
    """At most one ``ready(key)`` per ``period`` seconds for each key (one log line per kind of problem)."""

    def __init__(self, period: float) -> None:
        self.period = float(period)
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            return False
        self._last[key] = now
        return True


class InputLog:
    """Received / refused counters of a node's inputs, shared by the executor and worker threads."""

    def __init__(self, logger: Any, log_throttle: float) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self.throttle = Throttle(log_throttle)
        self._received: Counter[str] = Counter()
        self._last_seen: dict[str, float] = {}
        self._rejected: Counter[str] = Counter()
        self._rejected_at_last_report = 0
        self._warned: set[str] = set()

    def seen(self, what: str) -> None:
        with self._lock:
            self._received[what] += 1
            self._last_seen[what] = time.monotonic()

    def reject(self, reason: str, message: str) -> None:
        """Count a refused input under ``reason`` and log it (throttled per reason)."""
        with self._lock:
            self._rejected[reason] += 1
        if self.throttle.ready(reason):
            self._logger.warning(f"[{reason}] {message}")

    def warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self._logger.warning(message)

    def received(self) -> dict[str, int]:
        with self._lock:
            return dict(self._received)

    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    def ages(self, inputs: list[str] | tuple[str, ...]) -> dict[str, float | None]:
        """Seconds since each input was last received (None = never)."""
        now = time.monotonic()
        with self._lock:
            return {k: (now - self._last_seen[k]) if k in self._last_seen else None for k in inputs}

    def new_rejections(self) -> int:
        """Refusals since the previous call (a status turns WARN while new ones come in)."""
        with self._lock:
            total = sum(self._rejected.values())
            new, self._rejected_at_last_report = total - self._rejected_at_last_report, total
            return new


class StageTimes:
    """Per-stage milliseconds of the last ``keep`` frames, plus each frame's processing total."""

    def __init__(self, keep: int = 500) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._stages: dict[str, deque[float]] = {}
        self._total: deque[float] = deque(maxlen=keep)
        self._without_clip: deque[float] = deque(maxlen=keep)

    def add(self, stages_ms: dict[str, float]) -> float:
        """Record one frame; returns its processing time (every stage but the waiting in ``NOT_WORK``)."""
        total = float(sum(v for k, v in stages_ms.items() if k not in NOT_WORK))
        with self._lock:
            for name, ms in stages_ms.items():
                self._stages.setdefault(name, deque(maxlen=self._keep)).append(float(ms))
            self._total.append(total)
            self._without_clip.append(total - float(stages_ms.get("clip", 0.0)))
        return total

    def totals(self) -> list[float]:
        with self._lock:
            return list(self._total)

    def totals_without_clip(self) -> list[float]:
        with self._lock:
            return list(self._without_clip)

    def per_stage(self) -> dict[str, list[float]]:
        with self._lock:
            return {k: list(v) for k, v in self._stages.items()}

    def summary(self) -> dict[str, str]:
        """Key/values for /diagnostics: processing p50/p95, and the p50 of each stage."""
        with self._lock:
            total = np.array(self._total) if self._total else None
            without_clip = np.array(self._without_clip)
            stages = {k: np.array(v) for k, v in self._stages.items() if v}
        if total is None:
            return {}
        out = {f"processing ms p{q}": f"{np.percentile(total, q):.1f}" for q in (50, 95)}
        out["processing without clip ms p50"] = f"{np.percentile(without_clip, 50):.1f}"
        out.update({f"stage {k} ms p50": f"{np.percentile(v, 50):.1f}" for k, v in stages.items()})
        return out


def labeller_statuses(me: str, inputs: list[str], log: InputLog, times: StageTimes, counts: dict[str, Any],
                      camera_labels: list[str], diagnostics_period: float) -> list:
    """The labeller's DiagnosticStatus list; ``counts`` holds paired / labelled / dropped / frames_without /
    new_partial (frames that lacked a camera since the previous report)."""
    stale_after = max(2.0, 3 * diagnostics_period)
    ages = log.ages(inputs)
    received, rejected = log.received(), log.rejected()
    new_rejections = log.new_rejections()
    missing = [k for k, a in ages.items() if a is None or a > stale_after]
    freshness = {f"{k} age s": ("never" if a is None else f"{a:.2f}") for k, a in ages.items()}
    freshness.update({f"{k} received": received.get(k, 0) for k in inputs})
    paired, labelled, dropped = counts["paired"], counts["labelled"], counts["dropped"]
    without, new_partial = counts["frames_without"], counts["new_partial"]
    unpaired = rejected.get("no_image_within_slop", 0)
    success = paired / (paired + unpaired) if paired + unpaired else 0.0
    processing = {"frames labelled": labelled, "frames dropped (busy)": dropped, **times.summary()}
    return [
        conv.diagnostic_status(f"{me}: inputs", WARN if missing else OK,
                               f"no recent {', '.join(missing)}" if missing else "all inputs fresh", freshness),
        conv.diagnostic_status(f"{me}: pairing",
                               OK if (success >= 0.5 or received.get("points", 0) == 0) and not new_partial else WARN,
                               f"{paired} of {paired + unpaired} clouds paired with an image"
                               + (f", {new_partial} camera(s) missing from frames since last report"
                                  if new_partial else ""),
                               {"clouds paired": paired, "clouds without image": unpaired,
                                "pairing success": f"{success:.3f}",
                                **{f"frames without {c}": without.get(c, 0)
                                   for c in camera_labels if len(camera_labels) > 1}}),
        conv.diagnostic_status(f"{me}: rejected inputs", WARN if new_rejections else OK,
                               f"{sum(rejected.values())} rejected ({new_rejections} since last report)",
                               {f"rejected {k}": v for k, v in sorted(rejected.items())}),
        conv.diagnostic_status(f"{me}: processing", WARN if paired and not labelled else OK,
                               f"{labelled} frames labelled, {dropped} dropped while busy", processing),
    ]
