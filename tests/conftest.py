import os
import shutil
import sys
import tempfile

import torch

from tool_runs import close_servers

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
# Validation results kept between starts (seg2.data.validation_cache) go there too.
os.environ["XDG_CACHE_HOME"] = os.path.join(_SESSION_TMP, "cache")


def pytest_sessionfinish(session, exitstatus):
    close_servers()  # their files are in the folder
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
