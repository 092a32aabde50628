"""The process RSS the memory budget is checked against (D13: one tenant's
flood cannot take the memory every tenant's connections need): read from a
/proc/self/statm kept open, again and again, and the child's own after a
fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux /proc")


def test_every_reading_is_the_current_rss() -> None:
    # In a fresh interpreter: in the test worker, threads left by earlier
    # tests may free memory while this one grows it.
    script = textwrap.dedent("""
        import os, sys
        from gateway.edge._limits import rss_bytes

        def statm_rss():
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        first = rss_bytes()
        assert first > 0, first
        grown = b"x" * (64 * 1024 * 1024)  # written, so resident
        # The kept file is read from its start each time, not where the last
        # reading left it (that would read nothing: 0).
        again = rss_bytes()
        assert again >= first + 60 * 1024 * 1024, (first, again)
        assert abs(again - statm_rss()) < 4 * 1024 * 1024, (again, statm_rss())
        del grown
        assert abs(rss_bytes() - statm_rss()) < 4 * 1024 * 1024
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_forked_child_reads_its_own_rss_not_its_parents() -> None:
    """The parent's descriptor, inherited, would report the parent's memory:
    a worker over its budget would never see it."""
    script = textwrap.dedent("""
        import os, sys
        from gateway.edge._limits import rss_bytes

        parent = rss_bytes()  # opens (and keeps) the parent's statm
        pid = os.fork()
        if pid == 0:
            grown = b"x" * (128 * 1024 * 1024)
            with open("/proc/self/statm") as fh:
                own = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            read = rss_bytes()
            # The child's own reading, 128 MiB past the parent's.
            ok = abs(read - own) < 8 * 1024 * 1024 and read > parent + 64 * 1024 * 1024
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_child_forked_while_another_thread_reads_is_not_stuck() -> None:
    """A fork while another thread holds the reading's lock: the child takes
    a lock of its own instead of waiting forever for the copy it inherited."""
    script = textwrap.dedent("""
        import os, signal, sys, threading, time
        from gateway.edge import _limits

        _limits.rss_bytes()
        held = threading.Event()

        def hold():
            with _limits._statm_lock:
                held.set()
                time.sleep(3)

        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(2)  # stuck: SIGALRM ends the child, a failure
            os._exit(0 if _limits.rss_bytes() > 0 else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    done = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", script],
                          capture_output=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, (done.returncode, done.stderr.decode()[-2000:])
