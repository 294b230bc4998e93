"""device.keep_freed_memory: freed memory stays in the process for the next allocation (no page faults)."""

import os
import subprocess
import sys

import pytest

# Six rounds of a forward pass's pattern in miniature: two large tensors (64 and 32 MB) and their sum, all
# freed at the end; prints whether keep_freed_memory is in force and the page faults of the last round.
ROUNDS = """
import resource
import torch
from fasterrcnn.device import keep_freed_memory
print(keep_freed_memory())
for round in range(6):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a, b = torch.ones(16 * 2**20), torch.ones(8 * 2**20)
    c = a[: 8 * 2**20] + b
    del a, b, c
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def rounds(opt_out: bool) -> tuple[str, int]:
    env = {**os.environ, "FASTERRCNN_KEEP_FREED_MEMORY": "0" if opt_out else "1", "THP_MEM_ALLOC_ENABLE": "0"}
    out = subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only (elsewhere keep_freed_memory does nothing)")
def test_keep_freed_memory_reuses_the_pages_of_a_freed_tensor():
    """Without it every round faults its 128 MB in again (about 32,000 page faults: glibc unmaps allocations that
    large when they are freed); with it the last round reuses the heap's pages; the variable opts out."""
    state, faults = rounds(opt_out=False)
    assert state == "True" and faults < 1000
    state, faults = rounds(opt_out=True)
    assert state == "False" and faults > 16000
