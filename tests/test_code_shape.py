"""No function over 80 lines in the packages (scripts/long_functions.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_function_over_80_lines() -> None:
    spec = importlib.util.spec_from_file_location("long_functions", REPO / "scripts" / "long_functions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [f"{path}:{line}: {name} ({length} lines)"
             for path in module.python_files([str(REPO / p) for p in ("pruneopt", "reidserve", "export", "cpp_ext")])
             for line, name, length in module.long_functions(path, 80)]
    assert found == []
    assert list(module.long_functions(REPO / "export" / "bench.py", 60)), "the check finds a long function"
