"""Where a training step's time goes: data wait, forward + backward, optimizer, checkpoint, validation.

Each phase is bracketed by ``start(name)`` / ``stop(name)`` (a phase may be entered several times per step,
e.g. once per micro-batch; its spans add up). On the CPU a span is wall time. On CUDA the compute phases
(``device=True``) are timed by CUDA events on the current stream, i.e. on the GPU's own timeline: recording
an event does not wait for the GPU, and the events are read in :meth:`seconds` after the step's one read
back to the host, so the clock adds no synchronisation. The host phases (data wait, the checkpoint's
blocking part, validation) are wall time: what the loop spends there is what the GPUs wait.
"""

from __future__ import annotations

import time

import torch

PHASES = ("data", "fwd_bwd", "optim", "checkpoint", "validation")
"""The metrics.jsonl fields ``<phase>_s``, in step order."""
DEVICE_PHASES = frozenset({"fwd_bwd", "optim"})
"""Timed on the device's timeline (CUDA events); the compute time tokens/s and MFU are computed from."""


class StepClock:
    """Per-phase seconds of one step (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._open: dict[str, tuple[float, object]] = {}
        self._spans: list[tuple[str, float, float, object, object]] = []

    def _marker(self, name: str) -> tuple[float, object]:
        event = None
        if self.cuda and name in DEVICE_PHASES:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        return time.perf_counter(), event

    def start(self, name: str) -> None:
        assert name in PHASES and name not in self._open, name
        self._open[name] = self._marker(name)

    def stop(self, name: str) -> None:
        begin_time, begin_event = self._open.pop(name)
        end_time, end_event = self._marker(name)
        self._spans.append((name, begin_time, end_time, begin_event, end_event))

    def seconds(self) -> dict[str, float]:
        """``{phase: seconds}`` of the spans since the last call (every phase present, 0 when not entered)."""
        assert not self._open, f"phases still open: {sorted(self._open)}"
        totals = dict.fromkeys(PHASES, 0.0)
        for name, begin_time, end_time, begin_event, end_event in self._spans:
            if begin_event is not None:
                end_event.synchronize()  # already done: the step's results were read back before this
                totals[name] += begin_event.elapsed_time(end_event) / 1e3
            else:
                totals[name] += end_time - begin_time
        self._spans = []
        return totals
