import os
import shutil
import sys
import tempfile

# MKL's reproducible mode, as tools/train_net.py sets it: the test process and the tools it
# starts (which inherit this environment) then run the same MKL code paths. Read when MKL
# starts, so set before torch is imported; a value in the environment wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch  # noqa: E402

# Two cores: keep test processes from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Benchmarks and examples live in tools/benchmarks (not in the library); tests import them
# as ``benchmarks``.
_TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)

# Every temporary folder of the session (the tests' and their subprocesses') goes into one,
# removed when the session ends: some tests write hundreds of MB (a resumed training run).
_SESSION_TMP = tempfile.mkdtemp(prefix="seg2-tests-")
tempfile.tempdir = os.environ["TMPDIR"] = _SESSION_TMP


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
