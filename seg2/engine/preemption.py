"""Stop training cleanly when a scheduler asks for it. SLURM, Kubernetes and spot instances
send SIGTERM some time before they kill a job: every process then finishes its current
iteration, the processes agree on that iteration, the main process writes a checkpoint at it
(with the data position and RNG states, so ``--resume`` continues exactly), one line is
logged, and the run ends with :data:`PREEMPTED_EXIT`.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from typing import Dict, Optional, Sequence

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils.cli import PREEMPTED_EXIT, CleanExitError

__all__ = [
    "PREEMPTED_EXIT",
    "STOP_SIGNALS",
    "TrainingPreempted",
    "StopOnSignal",
    "forward_stop_signals",
    "ignore_stop_signals",
]

logger = logging.getLogger("seg2")

STOP_SIGNALS = (signal.SIGTERM,)


class TrainingPreempted(CleanExitError):
    """Training stopped on a signal after saving; the hook has logged the line already."""

    exit_status = PREEMPTED_EXIT
    logged = True


class StopOnSignal(HookBase):
    """On a stop signal, end training after the current iteration with a checkpoint at it.

    The handler (installed for the training loop only, the previous one restored after) just
    records the signal; after each step all processes exchange their flags, so they stop at
    the same iteration even when only some of them got the signal. Runs after the LR
    scheduler and Detectron2's ``PeriodicCheckpointer`` (it does not save twice when that one
    just saved) and before evaluation.

    Args:
        checkpointer: the trainer's checkpointer (saves on the main process only).
        state: :class:`seg2.engine.resume.TrainingState` to capture before saving.
        period: ``SOLVER.CHECKPOINT_PERIOD`` (iterations the periodic checkpointer saves at).
    """

    def __init__(self, checkpointer, state, period: int, signals: Sequence[int] = STOP_SIGNALS):
        self._checkpointer = checkpointer
        self._state = state
        self._period = period
        self._signals = tuple(signals)
        self._received: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self.stopped_at: Optional[int] = None

    def _on_signal(self, signum, frame):
        if self._received is None:
            self._received = signum

    def before_train(self):
        self._received, self.stopped_at = None, None
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._on_signal)

    def after_train(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler or signal.SIG_DFL)
        self._previous = {}
        if self._received is not None and self.stopped_at is None:
            # came after the last check (final evaluation): act as the signal would have
            signal.raise_signal(self._received)

    def _agreed_signal(self) -> Optional[int]:
        if comm.get_world_size() == 1:
            return self._received
        received = [s for s in comm.all_gather(self._received) if s is not None]
        return received[0] if received else None

    def after_step(self):
        signum = self._agreed_signal()
        if signum is None:
            return
        it = self.trainer.iter
        periodic = (it + 1) % self._period == 0 or it >= self.trainer.max_iter - 1
        if not periodic:  # else Detectron2's PeriodicCheckpointer has just saved this state
            self._state.capture()
            self._checkpointer.save(f"model_{it:07d}", iteration=it)
        self.stopped_at = it
        if comm.is_main_process():
            name = "model_final" if it >= self.trainer.max_iter - 1 else f"model_{it:07d}"
            path = os.path.join(self._checkpointer.save_dir, name + ".pth")
            logger.warning(
                f"Stopped by {signal.Signals(signum).name} after iteration {it}: checkpoint "
                f"{path} written; --resume continues from iteration {it + 1}"
            )
        comm.synchronize()  # no process exits (and gets the others killed) before the save
        raise TrainingPreempted(f"stopped by {signal.Signals(signum).name} after iteration {it}")


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of data-loader workers: a scheduler that signals every process of
    the job must not kill them before the training process has finished its iteration (they
    end with their loader, or when the training process is gone)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def forward_stop_signals(enabled: bool = True):
    """In the process that started the training processes (Detectron2's ``launch`` with
    several processes) and only waits for them: pass stop signals on to them. Kubernetes and
    ``docker stop`` signal only this process; SLURM signals all (a process that gets it twice
    stops once)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame):
        children = multiprocessing.active_children()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)
        if not children:  # none started yet, or all gone: this process stops as it would have
            signal.signal(signum, previous[signum] or signal.SIG_DFL)
            signal.raise_signal(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler or signal.SIG_DFL)
