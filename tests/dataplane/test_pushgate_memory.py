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

    MiB = 1 << 20

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    out = {}
    if sys.argv[1] == "threshold":
        size = 5 * MiB  # over the gateway's threshold (a test checks it is 4 MiB)
        if sys.argv[2] == "fixed":
            from gateway.dataplane import _pushgate
            _pushgate.fix_mmap_threshold()
        # A first large block freed: glibc's own threshold would rise past it.
        first = b"f" * (8 * MiB)
        del first
        before = rss()
        blocks, pins = [], []
        for _ in range(5):  # written (resident), each followed by a block in use
            blocks.append(b"x" * size)
            pins.append(b"p" * MiB)
        del blocks
        out["kept"] = rss() - before - 5 * MiB  # the pins' own pages aside
    else:
        from gateway.dataplane import _pushgate
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
    """With the threshold fixed, blocks over it are unmapped when freed,
    even after a larger one (glibc's own threshold rises to the largest
    block freed: then a 24 MiB payload decrypted for each delivery retry
    stayed in the heap, bench/README.md)."""
    assert 4 * MiB == MMAP_THRESHOLD_BYTES
    assert child("threshold", "fixed")["kept"] < 2 * MiB
    # Without it (glibc's default, no gateway code at all) the same blocks
    # stay in the heap: the check can tell.
    assert child("threshold", "default")["kept"] > 15 * MiB


def test_the_trim_gives_the_freed_heap_back() -> None:
    """malloc_trim(0): the pages of ~60 MiB of freed heap blocks, kept by
    glibc behind a block still in use, go back to the kernel."""
    assert child("trim")["released"] > 40 * MiB
