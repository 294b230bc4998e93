"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test, then as before (float sums depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
