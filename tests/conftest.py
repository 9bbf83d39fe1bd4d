import os
import sys

import torch

# Two cores: keep test processes from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Benchmarks and examples live in tools/benchmarks (not in the library); tests import them
# as ``benchmarks``.
_TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)
