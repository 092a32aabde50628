"""The decision core is sans-IO: importing it pulls in no aiohttp (STYLE.md)."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_aiohttp() -> None:
    code = (
        "import sys\n"
        "import gateway.core.decide, gateway.core.check, gateway.core.catalog, "
        "gateway.core.paths, gateway.core.headers, gateway.core.identity, gateway.core.push, "
        "gateway.dataset\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'asyncio', 'ssl', "
        "'socket')]\n"
        "print(','.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"core imported I/O modules: {proc.stdout}{proc.stderr}"
