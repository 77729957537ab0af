"""Installing without a C compiler still works: the pure-Python twin takes over."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _stage(tmp_path: Path) -> Path:
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    package = tmp_path / "genesis"
    package.mkdir()
    shutil.copy(REPO / "genesis" / "_parser.pyx", package / "_parser.pyx")
    return tmp_path


def _build(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=root, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )


def test_build_without_a_compiler_succeeds_and_says_so(tmp_path: Path) -> None:
    root = _stage(tmp_path)
    result = _build(root, CC="/bin/false", LDSHARED="/bin/false")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pure-Python parser will be used" in result.stderr
    assert not list((root / "genesis").glob("_parser*.so"))


def test_no_extensions_skips_the_compile(tmp_path: Path) -> None:
    root = _stage(tmp_path)
    result = _build(root, GENESIS_NO_EXTENSIONS="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (root / "genesis").iterdir()) == ["_parser.pyx"]
