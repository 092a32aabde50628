"""The decision core is sans-IO: importing it pulls in no aiohttp, asyncio,
ssl or socket, and its source reads and writes no files (STYLE.md). Every
module under gateway/core is imported and scanned, so a new one is covered
the day it is added."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.core


def test_core_imports_no_io() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(gateway.core.__path__, "gateway.core."))
    assert {"gateway.core.decide", "gateway.core.relations.snapshot", "gateway.core.fairqueue",
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


# Calls that read or write files. The core decodes and encodes bytes; the
# relation feed's read and the snapshot's atomic write live in gateway.files.
FILE_CALLS = frozenset({"open", "read_text", "read_bytes", "write_text", "write_bytes",
                        "mkdir", "makedirs", "fdopen", "mkstemp", "iterdir", "touch",
                        "rmdir", "unlink"})
# Modules whose import (or any call through them) means file I/O in the core.
FILE_MODULES = frozenset({"os", "pathlib", "tempfile", "shutil", "io", "mmap", "glob"})


def file_io_in(source: str) -> list[str]:
    """The file I/O a module's source does: a bare ``open(...)``, a call of a
    FILE_CALLS method on anything (``p.read_text()``), any call through a
    FILE_MODULES name (``os.replace(...)``, ``os.open(...)``), an import of
    one. ``str.replace`` or ``datetime.replace`` is no file I/O."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append(f"open() line {node.lineno}")
            elif isinstance(func, ast.Attribute) and (
                    func.attr in FILE_CALLS or
                    (isinstance(func.value, ast.Name) and func.value.id in FILE_MODULES)):
                found.append(f".{func.attr}() line {node.lineno}")
        elif isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in FILE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in FILE_MODULES:
            found.append(f"from {node.module} import ...")
    return found


def test_core_does_no_file_io() -> None:
    core = Path(gateway.core.__file__).parent
    sources = sorted(core.rglob("*.py"))
    names = {str(p.relative_to(core)) for p in sources}
    assert {"relations/snapshot.py", "relations/index.py", "breakglass.py"} <= names
    found = {str(p.relative_to(core)): hits for p in sources
             if (hits := file_io_in(p.read_text()))}
    assert found == {}, f"file I/O in the core: {found}"


@pytest.mark.parametrize("source", [
    "open('f')", "p.read_text()", "p.read_bytes()", "p.write_text('x')",
    "p.write_bytes(b'')", "os.replace(a, b)", "os.open(p, 0)", "p.mkdir()",
    "import os", "from pathlib import Path", "import tempfile",
    "with path.open('rb') as fh: pass", "os.fsync(fd)", "tempfile.mkstemp()",
])
def test_the_scan_finds_file_io(source: str) -> None:
    assert file_io_in(source)


@pytest.mark.parametrize("source", [
    "'a'.replace('a', 'b')", "now.replace(tzinfo=None)", "json.loads(data)",
    "import json", "from dataclasses import replace", "replace(case, status='x')",
])
def test_the_scan_lets_pure_code_be(source: str) -> None:
    assert file_io_in(source) == []
