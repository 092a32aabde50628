"""The C accelerator is optional: where no C compiler is, the project still
builds, without it, and the gateway runs its Python references (README,
"Native accelerator"). Built for real, by pip and setuptools, from the
repository, with a compiler that always fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wheel(tmp_path: Path, cc: str | None) -> list[str]:
    """The wheel pip builds from a clean copy of the sources: no module built
    in place by the editable install, no build/ left by another build (whose
    up-to-date extension would be taken without calling the compiler)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "gateway", src / "gateway",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    if cc is not None:
        env["CC"] = cc
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(tmp_path / "dist"), str(src)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_without_a_c_compiler_the_project_builds_without_the_accelerator(
        tmp_path: Path) -> None:
    names = _wheel(tmp_path, cc="false")
    assert "gateway/core/relations/index.py" in names
    assert not [n for n in names if n.startswith("gateway/core/_native.") and
                not n.endswith((".c", ".h", ".pyi"))], names


def test_with_a_c_compiler_the_accelerator_is_in_the_build(tmp_path: Path) -> None:
    """The control: the same build with the machine's compiler has it (and
    on a machine without one, this build is the one above)."""
    names = _wheel(tmp_path, cc=None)
    built = [n for n in names if n.startswith("gateway/core/_native.") and n.endswith(".so")]
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    assert bool(built) is (shutil.which(cc) is not None), names
