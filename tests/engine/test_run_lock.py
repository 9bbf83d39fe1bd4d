"""The OUTPUT_DIR lock: a folder held by a live process is refused with its PID and host; the
lock of a process that died (SIGKILL: it released nothing) is taken over; release removes the
file. The holder is a forked process, as another run would be."""

import contextlib
import multiprocessing
import os
import signal
import socket
import tempfile
import unittest
from unittest import mock

from seg2.engine.run_lock import LOCK_FILE, OutputDirLock
from seg2.io import InputError


def _hold(output_dir, ready, conn, worker_pid=None):
    lock = OutputDirLock(output_dir).acquire()
    if worker_pid is not None:  # a forked worker that outlives this process, as loaders do
        worker = multiprocessing.get_context("fork").Process(target=signal.pause, daemon=False)
        worker.start()
        worker_pid.value = worker.pid
    ready.set()
    with contextlib.suppress(EOFError):
        conn.recv()  # until the test says so (a pipe: the test may SIGKILL this process)
    lock.release()


class TestOutputDirLock(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.join(tempfile.mkdtemp(), "out")
        ctx = multiprocessing.get_context("fork")
        self.ready = ctx.Event()
        self.release, conn = ctx.Pipe()
        self.holder = ctx.Process(target=_hold, args=(self.dir, self.ready, conn))
        self.holder.start()
        self.assertTrue(self.ready.wait(60))

    def tearDown(self):
        if self.holder.is_alive():
            self.release.send(None)
            self.holder.join(10)

    def test_busy_then_released(self):
        with self.assertRaises(InputError) as ctx:
            OutputDirLock(self.dir).acquire()
        msg = str(ctx.exception)
        self.assertIn(f"OUTPUT_DIR {self.dir} is in use by another run", msg)
        self.assertIn(f"PID {self.holder.pid} on {socket.gethostname()}", msg)
        self.assertNotIn("\n", msg)
        self.release.send(None)
        self.holder.join(10)
        self.assertEqual(self.holder.exitcode, 0)
        self.assertFalse(os.path.exists(os.path.join(self.dir, LOCK_FILE)))  # released
        with OutputDirLock(self.dir):
            self.assertIn(f"pid={os.getpid()}\n", open(os.path.join(self.dir, LOCK_FILE)).read())
        self.assertFalse(os.path.exists(os.path.join(self.dir, LOCK_FILE)))

    def test_lock_of_a_killed_run_is_taken_over(self):
        os.kill(self.holder.pid, signal.SIGKILL)
        self.holder.join(10)
        path = os.path.join(self.dir, LOCK_FILE)
        self.assertIn(f"pid={self.holder.pid}\n", open(path).read())  # left behind
        with self.assertLogs("seg2", "INFO") as logs:
            lock = OutputDirLock(self.dir).acquire()
        self.assertIn(f"its holder, PID {self.holder.pid} on", logs.output[0])
        self.assertIn(f"pid={os.getpid()}\n", open(path).read())
        lock.release()

    def test_a_forked_worker_does_not_keep_the_lock(self):
        self.release.send(None)
        self.holder.join(10)
        ctx = multiprocessing.get_context("fork")
        ready, worker_pid = ctx.Event(), ctx.Value("i", 0)
        _, conn = ctx.Pipe()
        holder = ctx.Process(target=_hold, args=(self.dir, ready, conn, worker_pid))
        holder.start()
        self.assertTrue(ready.wait(60))
        try:
            with self.assertRaises(InputError):
                OutputDirLock(self.dir).acquire()
            os.kill(holder.pid, signal.SIGKILL)
            os.waitpid(holder.pid, 0)  # not join(): the worker holds its sentinel pipe open
            os.kill(worker_pid.value, 0)  # the worker is still alive
            OutputDirLock(self.dir).acquire().release()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker_pid.value, signal.SIGKILL)

    def test_without_flock_the_pid_and_host_decide(self):
        """A filesystem without flock: the file's holder is checked (live here: refused; dead
        here: taken over; on another host: refused, it cannot be checked from here)."""
        path = os.path.join(self.dir, LOCK_FILE)
        with mock.patch.object(OutputDirLock, "_flock", staticmethod(lambda fd: None)):
            with self.assertRaisesRegex(InputError, f"PID {self.holder.pid} on "):
                OutputDirLock(self.dir).acquire()
            os.kill(self.holder.pid, signal.SIGKILL)
            self.holder.join(10)
            OutputDirLock(self.dir).acquire().release()
            with open(path, "w") as f:
                f.write(f"pid={self.holder.pid}\nhost=elsewhere\nsince=then\n")
            with self.assertRaisesRegex(InputError, f"PID {self.holder.pid} on elsewhere"):
                OutputDirLock(self.dir).acquire()


if __name__ == "__main__":
    unittest.main()
