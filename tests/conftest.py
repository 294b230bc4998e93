"""Fixtures shared by several test files."""

import os
import signal

import pytest
import torch

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # A suite started as a background job (`make test &`, nohup) inherits SIGINT ignored, which training respects
    # (engine/interrupt.py): the interrupt tests need it delivered, in this process and in the commands it starts.
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


@pytest.fixture(scope="session", autouse=True)
def cpu_without_bf16():
    """The CPU reports no bf16 instructions, so precision "auto" is float32 in every test whatever the machine
    (tests pin float32 values; the machines differ in these instructions from day to day). A test of bf16
    asks for it (``precision="bf16"``) or patches these back."""
    with pytest.MonkeyPatch.context() as patch:  # session-wide: before any module's fixtures build a Detector
        patch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        patch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        yield
