"""What the push gate asks of glibc (gateway.dataplane._pushgate; D1
availability: the RSS the memory admission reads falls back after a push).

Each check runs in a fresh interpreter: the mmap threshold is set once per
process, and an RSS is only comparable within one. The child imports the
same ``gateway`` as this test (under mutation testing, the mutated one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway.dataplane._pushgate import MMAP_THRESHOLD_BYTES

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc on Linux: /proc/self/statm, mallopt, malloc_trim")

MiB = 1 << 20

CHILD = textwrap.dedent('''
    import json, os, sys
    from gateway.dataplane import _pushgate

    MiB = 1 << 20

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def kept(size):
        """RSS still held after a block of ``size`` is freed, the heap's top
        pinned by a small block allocated after it (so no automatic trim)."""
        before = rss()
        block = b"x" * size  # written: every page of it resident
        pin = b"p" * MiB  # larger than any free fragment: from the top, after it
        del block
        after = rss()
        del pin
        return after - before

    out = {}
    if sys.argv[1] == "threshold":
        if sys.argv[2] == "fixed":
            _pushgate.fix_mmap_threshold()
        # A first large block freed: glibc's own threshold would rise past it.
        first = b"f" * (8 * MiB)
        del first
        out["over"] = kept(_pushgate.MMAP_THRESHOLD_BYTES + MiB)
    else:
        junk = [bytes(1500) for _ in range(40000)]  # ~60 MiB of heap, not pymalloc's
        pin = b"p" * 70000
        del junk
        before = rss()
        _pushgate.release_memory()
        out["released"] = before - rss()
    print(json.dumps(out))
''')


def child(*args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(Path(gateway.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True,
                          text=True, timeout=60, env=env, check=True)
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_large_block_goes_back_to_the_kernel_when_freed() -> None:
    """With the threshold fixed, a block over it is unmapped when freed,
    even after a larger one (glibc's own threshold rises to the largest
    block freed: then a 24 MiB payload decrypted for each delivery retry
    stayed in the heap, bench/README.md)."""
    assert 4 * MiB == MMAP_THRESHOLD_BYTES
    fixed = child("threshold", "fixed")
    assert fixed["over"] < MiB
    # Without it, the same block stays: the check can tell.
    assert child("threshold", "default")["over"] > 4 * MiB


def test_the_trim_gives_the_freed_heap_back() -> None:
    """malloc_trim(0): the pages of ~60 MiB of freed heap blocks, kept by
    glibc behind a block still in use, go back to the kernel."""
    assert child("trim")["released"] > 40 * MiB
