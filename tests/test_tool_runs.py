"""The tests' tool runs (tool_runs: children of a server that has imported seg2) end as
``python ARGS...`` ends in a plain subprocess: the same exit status, output, arguments,
folder, environment, ``__main__``, exit handlers, joined threads, process group."""

import os
import signal
import tempfile
import textwrap
import unittest

from seg2_testing import run_tool, start_tool, subprocess_env

PROBE = textwrap.dedent(
    """
    import atexit, os, signal, sys, threading, time
    print("args", sys.argv, __name__, os.getcwd(), sys.path[0], os.environ.get("PROBE_VALUE"))
    print("own process group", os.getpgid(0) == os.getpid())
    print("to stderr", file=sys.stderr)
    atexit.register(print, "exit handler")
    threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined"))).start()
    how = sys.argv[1]
    if how == "raise":
        raise ValueError("boom")
    if how == "status":
        sys.exit(3)
    if how == "message":
        sys.exit("stopped: message")
    if how == "signal":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    """
)


@unittest.skipUnless(hasattr(os, "fork"), "no fork on this platform")
class TestToolRuns(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="seg2-tool-runs-")
        cls.script = os.path.join(cls.tmp, "probe.py")
        with open(cls.script, "w") as f:
            f.write(PROBE)
        cls.env = subprocess_env(PROBE_VALUE="42")

    def both(self, args):
        """(forked, plain) results of the same run."""
        return [
            run_tool(args, env=self.env, cwd=self.tmp, timeout=60, fork=fork)
            for fork in (True, False)
        ]

    def test_script_ends_alike(self):
        for how in ("return", "raise", "status", "message", "signal"):
            forked, plain = self.both([self.script, how, "x y"])
            with self.subTest(how=how):
                self.assertEqual(forked.returncode, plain.returncode)
                self.assertEqual(forked.stdout, plain.stdout)
                # a traceback names the server's frames too; its last line is the same
                self.assertEqual(forked.stderr.splitlines()[-1], plain.stderr.splitlines()[-1])
                self.assertEqual("Traceback" in forked.stderr, "Traceback" in plain.stderr)
        self.assertEqual(plain.returncode, -signal.SIGTERM)
        forked, plain = self.both([self.script, "return"])
        self.assertIn(f"args ['{self.script}', 'return'] __main__ {self.tmp} {self.tmp} 42",
                      forked.stdout)
        self.assertTrue(forked.stdout.endswith("thread joined\nexit handler\n"), forked.stdout)

    def test_code_string_ends_alike(self):
        forked, plain = self.both(["-c", PROBE, "status"])
        self.assertEqual((forked.returncode, forked.stdout), (plain.returncode, plain.stdout))
        self.assertIn("args ['-c', 'status'] __main__", forked.stdout)

    def test_new_session_and_kill(self):
        for fork in (True, False):
            log = os.path.join(self.tmp, f"session{fork}.log")
            proc = start_tool([self.script, "return"], env=self.env, stdout=log,
                              stderr="stdout", new_session=True, fork=fork)
            self.assertEqual(proc.wait(60), 0)
            self.assertIn("own process group True", open(log).read())
            self.assertIn("to stderr", open(log).read())
            proc = start_tool(["-c", "import time; time.sleep(60)"], env=self.env, fork=fork)
            os.kill(proc.pid, signal.SIGKILL)
            self.assertEqual(proc.wait(60), -signal.SIGKILL)


if __name__ == "__main__":
    unittest.main()
