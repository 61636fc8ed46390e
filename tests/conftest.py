"""Test set-up shared by the suite.

Triton kernels run in Triton's interpreter when no GPU is present; the interpreter is chosen when
``triton.jit`` decorates a kernel, so the variable is set before anything imports our kernels.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: one intra-op thread is faster, and far faster on a busy CPU.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
