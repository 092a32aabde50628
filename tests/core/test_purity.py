"""The decision core is sans-IO: importing it pulls in no aiohttp, asyncio,
ssl or socket (STYLE.md). Every module under gateway/core is imported, so a
new one is covered the day it is added."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import gateway.core


def test_core_imports_no_io() -> None:
    modules = sorted(f"gateway.core.{m.name}" for m in pkgutil.iter_modules(gateway.core.__path__))
    assert {"gateway.core.decide", "gateway.core.relstore", "gateway.core.fairqueue",
            "gateway.core.classification", "gateway.core.pseudonym"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'asyncio', 'ssl', "
        "'socket')]\n"
        "print(','.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"core imported I/O modules: {proc.stdout}{proc.stderr}"
