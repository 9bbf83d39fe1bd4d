"""One run per OUTPUT_DIR: two runs writing one folder would interleave their logs and
metrics and overwrite each other's checkpoints. The main process holds an exclusive lock on
``OUTPUT_DIR/run.lock`` (which names its PID and host) for the whole run; a second run, or a
``--resume`` of a run that is still alive, ends with one line naming the holder.

The lock is ``fcntl.flock``: the kernel drops it when the holder dies, however it dies, so a
lock file left by a killed run is stale by construction and is taken over (with a note). A
forked child (a data-loader worker) closes its copy of the descriptor, so that workers which
outlive a killed main process for a few seconds do not keep its folder locked. On a
filesystem without ``flock`` the file's PID and host decide: a process on this host that no
longer exists is stale; a holder on another host is respected.
"""

import contextlib
import errno
import logging
import os
import socket
import time
from typing import Iterator, Optional, Tuple

from detectron2.utils import comm

from ..io import InputError

try:
    import fcntl
except ImportError:  # Windows: the PID/host check alone
    fcntl = None

__all__ = ["LOCK_FILE", "OutputDirLock", "hold_output_dir"]

logger = logging.getLogger("seg2")

LOCK_FILE = "run.lock"

_held_fds = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in _held_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _parse(text: str) -> Optional[Tuple[int, str, str]]:
    """(pid, host, since) of a lock file's content, None if it names no process."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        return int(fields["pid"]), fields.get("host", "?"), fields.get("since", "?")
    except (KeyError, ValueError):
        return None


class OutputDirLock:
    """Exclusive lock of one output folder by this process (:meth:`acquire`, :meth:`release`;
    also a context manager)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._fd: Optional[int] = None

    def _busy(self, holder: Optional[Tuple[int, str, str]]) -> InputError:
        who = (
            f"PID {holder[0]} on {holder[1]}, since {holder[2]}"
            if holder
            else "a process that has not written its PID yet"
        )
        return InputError(
            f"OUTPUT_DIR {self.output_dir} is in use by another run ({who}; lock file "
            f"{self.path}): wait for it to end or stop it, or choose another OUTPUT_DIR"
        )

    def acquire(self) -> "OutputDirLock":
        while True:
            try:
                os.makedirs(self.output_dir, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise InputError(
                    f"OUTPUT_DIR {self.output_dir}: cannot create {LOCK_FILE} there "
                    f"({e.strerror})"
                ) from None
            try:
                locked = self._flock(fd)
                previous = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                if locked is False:
                    raise self._busy(previous)
                # the holder we waited on may have removed the file: lock the one in place
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        host = socket.gethostname()
        if previous and locked is None:  # no flock here: judge the file's holder
            pid, their_host, _ = previous
            if their_host != host or _alive(pid):
                os.close(fd)
                raise self._busy(previous)
        if previous and previous[:2] != (os.getpid(), host):
            logger.info(
                f"Took over {self.path}: its holder, PID {previous[0]} on {previous[1]}, "
                "ended without releasing it"
            )
        content = f"pid={os.getpid()}\nhost={host}\nsince={time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, content.encode(), 0)
        self._fd = fd
        _held_fds.add(fd)
        return self

    @staticmethod
    def _flock(fd: int) -> Optional[bool]:
        """True: locked; False: another process holds it; None: no flock on this system."""
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)  # before unlocking: a waiting run then locks a new file
        _held_fds.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold_output_dir(output_dir: str) -> Iterator[None]:
    """Hold ``output_dir``'s lock (main process) for the block; the other processes wait
    until the main process has it, so none of them writes there (``log.txt.rankN``) for a run
    that is refused."""
    lock = OutputDirLock(output_dir) if comm.is_main_process() else None
    if lock is not None:
        lock.acquire()
    comm.synchronize()
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
