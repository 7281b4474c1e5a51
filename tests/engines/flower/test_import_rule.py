"""Flower stays behind one door: only heronsfl/engines/flower may import flwr."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import heronsfl

SRC = Path(heronsfl.__file__).parent
ADAPTER = SRC / "engines" / "flower"


def _imports_flwr(path: Path) -> list[int]:
    """Line numbers of `import flwr...` / `from flwr... import` in one module (any nesting)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(n == "flwr" or n.startswith("flwr.") for n in names):
            lines.append(node.lineno)
    return lines


def test_no_module_outside_engines_flower_imports_flwr() -> None:
    offenders = {
        str(p.relative_to(SRC)): lines
        for p in sorted(SRC.rglob("*.py"))
        if ADAPTER not in p.parents and (lines := _imports_flwr(p))
    }
    assert offenders == {}, f"flwr imported outside engines/flower: {offenders}"


def test_the_check_sees_the_adapter_imports() -> None:
    # Guards the test itself: the adapter does import flwr, so the scan must find it there.
    assert _imports_flwr(ADAPTER / "codec.py")
    assert any(_imports_flwr(p) for p in ADAPTER.glob("*.py"))


def test_heronsfl_imports_without_flwr_loaded() -> None:
    # Importing the library (not the adapter) must not pull flwr in as a side effect.
    code = (
        "import sys, heronsfl.cli, heronsfl.engines.simulation, heronsfl.runner; "
        "sys.exit(int(any(m == 'flwr' or m.startswith('flwr.') for m in sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
