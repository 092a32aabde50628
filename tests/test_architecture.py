"""The package layout is a checked contract (docs/architecture.md): the
import-linter contracts in pyproject.toml hold, a new upward import breaks
them, and every package says what it owns and what it may import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATEWAY = REPO / "gateway"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, capture_output=True, text=True, check=False,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


@pytest.mark.lint
@pytest.mark.timeout(300)
def test_the_import_contracts_hold() -> None:
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.lint
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("module", "line", "contract"), [
    # an upward import: the core would know the state store
    ("core/model.py", "import gateway.state", "Layers"),
    # the edge would know the data plane (also upward)
    ("edge/_limits.py", "import gateway.dataplane", "does not know the data plane"),
    # someone outside the audit package reaches into its private chain module
    ("push/_service.py", "import gateway.audit._chain", "_private modules"),
    # the decision core would open sockets
    ("core/paths.py", "import socket", "sans-IO"),
    # a server module would import the demo
    ("server/_gateway.py", "import gateway.demo", "imported only by the CLI"),
])
def test_a_broken_rule_fails_the_build(tmp_path: Path, module: str, line: str,
                                       contract: str) -> None:
    shutil.copytree(GATEWAY, tmp_path / "gateway",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "gateway" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout
    broken = " ".join(proc.stdout.split("Broken contracts", 1)[-1].split())
    assert contract in broken, proc.stdout


def test_every_package_says_what_it_owns_and_may_import() -> None:
    packages = [p for p in GATEWAY.rglob("__init__.py")
                if "simulators" not in p.parts and p.parent != GATEWAY]
    assert len(packages) >= 12
    for init in packages:
        text = init.read_text()
        assert text.startswith('"""'), f"{init}: no docstring"
        doc = text.split('"""')[1]
        assert "import" in doc.lower(), f"{init}: the docstring does not say what it may import"


def test_gateway_holds_packages_and_at_most_a_dozen_modules() -> None:
    modules = sorted(p.name for p in GATEWAY.glob("*.py"))
    assert len(modules) <= 12, modules
