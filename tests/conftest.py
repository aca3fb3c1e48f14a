"""Suite-wide settings: one torch thread, since the judge's processes share 2 cores."""

import torch

torch.set_num_threads(1)
