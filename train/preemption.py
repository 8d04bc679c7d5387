"""Preemption: SIGTERM / SIGUSR1 (what SLURM sends before a time limit or preemption) ask the
run to stop. The handler only sets a flag; at the end of every step the ranks agree, save one
checkpoint together and exit with ``REQUEUE_EXIT_CODE`` so the batch script requeues the job.
A second signal during the save only sets the flag again, so it cannot interrupt the save."""

from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: stopped early on purpose, run again to continue
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(
            f"preempted at step {step}: checkpoint saved, exiting {REQUEUE_EXIT_CODE} to be requeued"
        )
        self.step = step


class PreemptionWatch:
    """Installs the handlers for its lifetime (a context manager) and answers, collectively,
    whether any rank was signalled."""

    def __init__(self) -> None:
        self.signalled = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if not self.signalled:
            log.warning("received %s: stopping after this step", signal.Signals(signum).name)
        self.signalled = True

    def __enter__(self) -> PreemptionWatch:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        # After a preemption the handlers stay: a late signal while the process exits must not
        # turn the requeue status into a death by signal.
        if not self.signalled:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def any_rank_signalled(self) -> bool:
        if not dist.is_initialized():
            return self.signalled
        flag = torch.tensor([int(self.signalled)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
