"""Stopping a training run on a signal at a step boundary, so the saved state resumes exactly.

SIGINT (Ctrl-C), SIGTERM (how SLURM, Kubernetes and torchrun stop jobs), SIGHUP (the terminal or
ssh session closed) and SIGUSR1 (SLURM's pre-emption warning, ``--signal=USR1@120``) only set a
flag: the step under way finishes (its optimizer update, BatchNorm statistics, random draws and
counters all belong to it), the loop saves ``last.pt`` at that step boundary, prints one line and
the command exits with ``128 + signal``.

Under torchrun the ranks vote after every step (one all-reduce): when any rank got a signal, all of
them stop after the same step and save together. A second signal while stopping ends the process at
once (Ctrl-C twice: ``KeyboardInterrupt``) without saving; ``last.pt`` then holds the last step saved.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import torch
import torch.distributed as dist

from comem.engine.distributed import DistContext

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name)
)


class TrainingStopped(Exception):
    """A stop signal ended the run after its state was saved (exit status ``128 + signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Within ``with StopSignals() as stop:`` the stop signals set ``stop.received``; the loop asks
    :meth:`due` at step boundaries. Outside the main thread (where handlers cannot be set) it is inert."""

    def __init__(self) -> None:
        self.received = 0  # the first stop signal received by this process (0: none)
        self.signum = 0  # the signal the run stops for, agreed by every rank once due() says so
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:  # a second signal: no clean stop wanted any more
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.restore()

    def due(self, context: DistContext, device: torch.device) -> bool:
        """Whether the run stops at this step boundary: a signal reached this process or, under
        torchrun, any rank (every rank must call this at the same boundaries)."""
        if context.enabled:
            vote = torch.tensor([self.received], device=device)
            dist.all_reduce(vote, op=dist.ReduceOp.MAX)
            self.signum = int(vote.item())
        else:
            self.signum = self.received
        return self.signum != 0


def stopped_message(signum: int, saved: str) -> str:
    return f"{signal.Signals(signum).name}: stopped at a step boundary; saved {saved}; continue with --resume"
