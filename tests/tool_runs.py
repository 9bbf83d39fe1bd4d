"""Run seg2's command-line tools from tests as processes of their own, without paying the
~4.5 CPU-s of importing torch, torchvision and Detectron2 at each start.

A tool server (this file run as a script, one per environment) imports what the tools
import, then forks a child for each run; the child takes the run's arguments, working folder,
standard streams and environment and runs the script as ``__main__``, so that a test sees
a real process: its own PID to signal, its exit status (negative: the signal that ended it),
its own output. The server is started with the run's environment (but for the variables in
``_SHARED_ACROSS``), so that what is read from the environment at import time is read as a
fresh process would read it. What the imports printed in the server is put before each run's
stderr.

``SEG2_TEST_FORK=0`` (and any platform but Linux) runs every tool as a plain subprocess
instead, through the same interface.
"""
import atexit
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Runs whose environments differ only in these share a server: pytest's name of the running
# test, and SEG2_DEBUG, which seg2 reads when a tool ends on an error. (DETECTRON2_DATASETS
# is not one: the builtin datasets, Detectron2's and seg2's, are registered at import.)
_SHARED_ACROSS = ("PYTEST_CURRENT_TEST", "SEG2_DEBUG")
_MAX_SERVERS = 2


def _fork_enabled(fork) -> bool:
    if fork is None:  # as multiprocessing, fork only on Linux (macOS frameworks are not fork-safe)
        fork = sys.platform.startswith("linux") and os.environ.get("SEG2_TEST_FORK") != "0"
    return fork and hasattr(os, "fork")


class ToolProcess:
    """A started tool run: ``pid``, ``poll()``, ``wait(timeout)``, ``returncode``, as
    ``subprocess.Popen`` has them."""

    def __init__(self, pid, poll_status):
        self.pid = pid
        self.returncode = None
        self._poll_status = poll_status

    def poll(self):
        if self.returncode is None:
            self.returncode = self._poll_status()
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


class _Server:
    """One tool server process and the pipe to it."""

    def __init__(self, env):
        self.import_output = tempfile.NamedTemporaryFile(prefix="seg2-tool-server-", suffix=".err")
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.import_output,
            text=True,
        )
        self.running = set()  # children not yet reaped
        ready = self._read()
        if ready != "ready":
            raise RuntimeError(f"tool server did not start: {self.imports_printed()}")

    def imports_printed(self) -> str:
        with open(self.import_output.name) as f:
            return f.read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tool server ended: {self.imports_printed()}")
        return json.loads(line)

    def ask(self, request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, request) -> int:
        pid = self.ask(request)
        self.running.add(pid)
        return pid

    def poll(self, pid):
        status = self.ask({"op": "poll", "pid": pid})
        if status is not None:
            self.running.discard(pid)
        return status

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.import_output.close()


_servers = {}


def _server_for(env) -> _Server:
    key = tuple(sorted((k, v) for k, v in env.items() if k not in _SHARED_ACROSS))
    server = _servers.pop(key, None)
    if server is None:
        idle = [k for k, other in _servers.items() if not other.running]  # oldest use first
        for old in idle[: max(0, len(_servers) - _MAX_SERVERS + 1)]:
            _servers.pop(old).close()
        server = _Server(env)
    _servers[key] = server
    return server


@atexit.register
def close_servers():
    """End the servers (each ends when its input does)."""
    while _servers:
        _servers.popitem()[1].close()


def start_tool(
    args, *, env=None, cwd=REPO_ROOT, stdout=None, stderr=None, new_session=False, fork=None
):
    """Start ``python ARGS...`` (a script path or ``-c CODE`` first). ``stdout`` and
    ``stderr`` are file paths (``None``: the null device); ``stderr`` may be ``"stdout"``.
    ``new_session``: the run gets a process group of its own (``os.killpg(pid, ...)``).
    ``fork``: from a tool server (default unless ``SEG2_TEST_FORK=0``) or a plain subprocess."""
    env = dict(os.environ if env is None else env)
    stdout = stdout or os.devnull
    if not _fork_enabled(fork):
        out = open(stdout, "ab")
        err = subprocess.STDOUT if stderr == "stdout" else open(stderr or os.devnull, "ab")
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=new_session,
        )
        out.close()
        if err is not subprocess.STDOUT:
            err.close()
        return ToolProcess(proc.pid, proc.poll)
    server = _server_for(env)
    printed = server.imports_printed()
    if printed:  # what a fresh process would have printed at import
        with open(stdout if stderr == "stdout" else (stderr or os.devnull), "a") as f:
            f.write(printed)
    pid = server.start(
        {
            "op": "start",
            "args": list(map(str, args)),
            "cwd": str(cwd),
            "env": env,
            "stdout": str(stdout),
            "stderr": str(stderr or os.devnull),
            "new_session": new_session,
        }
    )
    return ToolProcess(pid, lambda: server.poll(pid))


def run_tool(
    args, *, env=None, cwd=REPO_ROOT, timeout=600, fork=None
) -> subprocess.CompletedProcess:
    """Run ``python ARGS...`` to its end, as ``subprocess.run(..., capture_output=True,
    text=True, timeout=...)`` does."""
    with tempfile.TemporaryDirectory(prefix="seg2-tool-run-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        proc = start_tool(args, env=env, cwd=cwd, stdout=out, stderr=err, fork=fork)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        with open(out, errors="replace") as o, open(err, errors="replace") as e:
            return subprocess.CompletedProcess(
                [sys.executable, *args], proc.returncode, o.read(), e.read()
            )


# ---- the server ---------------------------------------------------------------------------


def _serve():
    """Import what the tools import, then fork a child per "start" request. Returns the
    request in the child, None in the server at the end of its input."""
    import seg2  # noqa: F401  first, as the tools import it

    # isort: split

    import detectron2.engine  # noqa: F401

    import seg2.engine  # noqa: F401
    import seg2.evaluation  # noqa: F401
    import seg2.utils.visualize  # noqa: F401

    requests, replies = sys.stdin, sys.stdout
    replies.write('"ready"\n')
    replies.flush()
    for line in requests:
        request = json.loads(line)
        if request["op"] == "start":
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                return request
            reply = pid
        else:  # "poll"
            done, status = os.waitpid(request["pid"], os.WNOHANG)
            reply = None if done == 0 else os.waitstatus_to_exitcode(status)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return None


def _become(request) -> int:
    """In the child: take the run's streams, folder, environment and arguments, run it as
    ``python ARGS...`` would, and return its exit status."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    if request["stderr"] == "stdout":
        os.dup2(out, 2)
    else:
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 2)
    if request["new_session"]:
        os.setsid()
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    args = request["args"]
    try:
        if args[0] == "-c":
            sys.argv = ["-c", *args[2:]]
            sys.path[0] = ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(args[1], "<string>", "exec"), main.__dict__)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as e:  # as the interpreter reads it
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


_exit_status = None


def _end_child():
    """Registered before the imports register theirs, so it runs after every exit handler of
    the run: the child ends as the interpreter ends a process (threads joined, exit handlers
    run, streams flushed) but does not free its heap object by object."""
    if _exit_status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)


if __name__ == "__main__":
    atexit.register(_end_child)
    _request = _serve()
    if _request is not None:
        _exit_status = _become(_request)
        sys.exit(_exit_status)
