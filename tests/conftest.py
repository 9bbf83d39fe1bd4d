import os

import torch

# Two cores: keep test processes from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))
