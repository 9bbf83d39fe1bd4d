"""How seg2's command-line tools end: a user error (bad data, config or path) prints one short
message and exits with status 2, without a traceback; an internal error keeps its traceback.
``SEG2_DEBUG=1`` (or ``--debug``) shows the traceback of user errors too.

Use :func:`user_errors` on the function each process runs (``main``, also inside
Detectron2's ``launch`` workers) and :func:`run_cli` around the top-level call, which turns a
worker that already reported its user error into the same quiet exit::

    @user_errors
    def main(args): ...

    if __name__ == "__main__":
        args = parser.parse_args()
        run_cli(launch, main, args.num_gpus, ..., args=(args,))
"""

import functools
import logging
import os
import re
import sys
from typing import Any, Callable, List, Optional, Tuple, Type

from ..io import InputError

__all__ = [
    "USER_ERROR_EXIT",
    "PREEMPTED_EXIT",
    "CleanExitError",
    "add_debug_argument",
    "debug_enabled",
    "set_debug",
    "is_user_error",
    "user_errors",
    "run_cli",
    "split_overrides",
]

# argparse exits with 2 on bad arguments; bad data and configs are the same kind of mistake.
USER_ERROR_EXIT = 2
# A run stopped by SIGTERM after saving its state: 128 + 15, as a shell reports a process the
# signal ended, so schedulers and scripts that look at the status see a stopped, not a finished,
# run (seg2.engine.preemption).
PREEMPTED_EXIT = 143
_DEBUG_ENV = "SEG2_DEBUG"


class CleanExitError(RuntimeError):
    """An error whose message is the whole story for the user (e.g. training diverged),
    though it is not bad input; the tools end on it like on an :class:`InputError`, with
    ``exit_status``, printing the message unless ``logged`` (already said in the log)."""

    exit_status = USER_ERROR_EXIT
    logged = False


def _user_error_types() -> Tuple[Type[BaseException], ...]:
    return (InputError, CleanExitError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, _user_error_types())


def debug_enabled() -> bool:
    return os.environ.get(_DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def add_debug_argument(parser) -> Any:
    """Add ``--debug`` (show tracebacks of user errors) to an argparse parser; pass the
    parsed value to :func:`set_debug`."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show tracebacks of user errors (same as {_DEBUG_ENV}=1)",
    )
    return parser


def set_debug(enabled: bool) -> None:
    """Turn tracebacks of user errors on (through the environment, so ``launch``'s worker
    processes inherit it)."""
    if enabled:
        os.environ[_DEBUG_ENV] = "1"


class _HideUserErrorTracebacks(logging.Filter):
    """Detectron2's training loop logs every exception with its traceback before re-raising
    it; for user errors the one-line message printed at exit says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not is_user_error(exc) or debug_enabled()


_FILTER = _HideUserErrorTracebacks()
# Loggers that log exceptions with logger.exception on their way up.
_EXCEPTION_LOGGERS = ("detectron2.engine.train_loop", "detectron2.engine.hooks")


def user_message(exc: BaseException) -> str:
    """The exception's own message. PyTorch re-raises an error from a DataLoader worker with
    the worker's traceback pasted into the message; only the original message is kept."""
    msg = str(exc)
    if "\nOriginal Traceback (most recent call last):" in msg:
        marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        if marker in msg:
            return msg.rsplit(marker, 1)[1].strip()
        return msg.strip().splitlines()[-1]
    return msg


def _report(exc: BaseException) -> None:
    prefix = ""
    try:
        from detectron2.utils import comm

        if comm.get_world_size() > 1:
            prefix = f"[rank {comm.get_rank()}] "
    except Exception:  # detectron2 not importable: single process
        pass
    print(f"{prefix}error: {user_message(exc)}", file=sys.stderr, flush=True)


def user_errors(func: Optional[Callable] = None, *, return_code: bool = False) -> Callable:
    """Decorate the function a process runs: a user error prints ``error: <message>`` to
    stderr and raises ``SystemExit(2)`` (or, with ``return_code=True``, returns 2, for a
    ``main`` whose return value is the exit status). Picklable by name, so it works as
    ``launch``'s ``main_func``."""
    if func is None:
        return functools.partial(user_errors, return_code=return_code)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for name in _EXCEPTION_LOGGERS:
            logging.getLogger(name).addFilter(_FILTER)
        try:
            return func(*args, **kwargs)
        except Exception as e:
            if not is_user_error(e) or debug_enabled():
                raise
            if not getattr(e, "logged", False):
                _report(e)
            status = getattr(e, "exit_status", USER_ERROR_EXIT)
            if return_code:
                return status
            raise SystemExit(status) from None

    return wrapper


def run_cli(entry: Callable, *args, **kwargs) -> Any:
    """Call ``entry(*args, **kwargs)`` (``main`` itself, or ``launch`` with ``main``) and end
    like :func:`user_errors`. Worker processes started by ``launch`` report their own user
    error before exiting with status 2 (or stop on SIGTERM with ``PREEMPTED_EXIT``); here that
    exit becomes this process's, quietly."""
    try:
        return user_errors(entry)(*args, **kwargs)
    except Exception as e:
        from torch.multiprocessing import ProcessExitedException

        if isinstance(e, ProcessExitedException) and e.exit_code in (
            USER_ERROR_EXIT,
            PREEMPTED_EXIT,
        ):
            raise SystemExit(e.exit_code) from None
        raise


_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_overrides(argv: List[str]) -> List[str]:
    """Put trailing ``KEY VALUE`` config overrides behind ``--``, so a list option
    (``--input a.jpg b.jpg MODEL.WEIGHTS m.pth``) stops before them, as in Detectron2's tools.
    A token that names an existing file is never taken for a key."""
    if "--" in argv:
        return argv
    for i, token in enumerate(argv):
        if _KEY.match(token) and not os.path.exists(token):
            return argv[:i] + ["--"] + argv[i:]
    return argv
