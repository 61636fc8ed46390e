"""Test set-up shared by the suite.

Triton kernels run in Triton's interpreter when no GPU is present; the interpreter is chosen when
``triton.jit`` decorates a kernel, so the variable is set before anything imports our kernels.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
