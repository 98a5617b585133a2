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


def _unexplained_lazy_imports(path: Path, root: Path = REPO) -> list[str]:
    """Imports inside functions without a comment on their line or on the import block they belong to."""
    import ast

    src = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(src))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Import | ast.ImportFrom):
                continue
            block = range(sub.lineno - 1, sub.end_lineno or sub.lineno)
            j = sub.lineno - 2  # walk up over the imports (and blank lines between them) above this one
            while j >= 0 and (src[j].strip().startswith(("import ", "from ")) or not src[j].strip()):
                if "#" in src[j]:
                    break
                j -= 1
            explained = any("#" in src[k] for k in block) or (j >= 0 and "#" in src[j])
            if not explained:
                found.append(f"{path.relative_to(root)}:{sub.lineno}: {src[sub.lineno - 1].strip()}")
    return found


def test_every_import_inside_a_function_says_why_it_is_lazy() -> None:
    """DESIGN: an import inside a function only keeps a heavy or optional dependency lazy, and says so."""
    found = [line for pkg in ("pruneopt", "reidserve", "export", "cpp_ext")
             for path in sorted((REPO / pkg).rglob("*.py")) for line in _unexplained_lazy_imports(path)]
    assert found == []


def test_the_lazy_import_check_finds_an_unexplained_one(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n    import json\n    return json\n")
    assert _unexplained_lazy_imports(tmp_path / "m.py", tmp_path) == ["m.py:2: import json"]
    (tmp_path / "m.py").write_text("def f():\n    import json  # lazy: a reason\n    return json\n")
    assert _unexplained_lazy_imports(tmp_path / "m.py", tmp_path) == []
