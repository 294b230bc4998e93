"""Fixtures shared by several test files."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two worker processes on two cores: one torch thread each (and in the commands
    # the tests start), instead of two threads per worker contending for the same cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test, then as before (float sums depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
