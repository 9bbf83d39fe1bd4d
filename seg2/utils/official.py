"""Calling official scripts (cityscapesscripts) as functions, quietly and with clean errors."""
import contextlib
import io
from typing import Callable

from ..io import InputError

__all__ = ["run_official"]


def run_official(fn: Callable, *args, source: str = "", **kwargs):
    """Call an official evaluation or preparation function quietly.

    cityscapesscripts print progress to stdout and report bad input with ``sys.exit``;
    both are captured here, and an exit becomes :class:`~seg2.io.InputError` with the
    script's message (which names the file), prefixed by ``source``.
    """
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return fn(*args, **kwargs)
    except SystemExit:
        errors = [line for line in out.getvalue().splitlines() if "ERROR" in line]
        message = errors[-1].replace("ERROR: ", "") if errors else out.getvalue()[-500:]
        raise InputError(f"{source}: {message}" if source else message) from None
