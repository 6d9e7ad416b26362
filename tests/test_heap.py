"""precision.fast_heap: engine processes keep freed memory in the heap (fewer page faults), memory-bounded ones
(Binder's $SAS_KIT_MMAP_THRESHOLD) and SAS_KIT_HEAP=default never do. Each case runs in a fresh interpreter: the
setting is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sas_kit.models import precision

PROBE = """
import resource
import numpy as np
from sas_kit.models import precision
on = precision.fast_heap()
trimmed = precision.trim_heap()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # allocate and free 64 MiB of 8 MiB blocks: mmapped afresh each time under glibc's defaults
    blocks = [np.ones(1 << 20) for _ in range(8)]
    del blocks
print(on, trimmed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(**env_values) -> tuple[str, str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("SAS_KIT_MMAP_THRESHOLD", "SAS_KIT_HEAP")}
    env.update(env_values)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    on, trimmed, faults = out.stdout.split()
    return on, trimmed, int(faults)


@pytest.mark.skipif(precision._LIBC is None, reason="not glibc: the heap settings are no-ops")
def test_fast_heap_in_an_engine_process_and_never_in_a_memory_bounded_one():
    on, trimmed, fast = _run()
    assert on == "True" and trimmed == "False"  # on, and trim_heap then keeps the pages
    off, _, default = _run(SAS_KIT_HEAP="default")
    binder, _, _ = _run(SAS_KIT_MMAP_THRESHOLD="1048576")
    assert off == "False" and binder == "False"
    # the point of it: reused heap blocks instead of fresh mmaps (20 x 64 MiB = 327,680 pages under the defaults)
    assert fast * 10 < default, (fast, default)
