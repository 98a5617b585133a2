"""List the functions longer than a limit (default 80 lines, from ``def`` to the last line of the body).

    python scripts/long_functions.py reidserve export          # exit status 1 when any is found
    python scripts/long_functions.py --max 60 pruneopt/cli

Nested functions are measured on their own (and count in their parent's length too).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path


def python_files(paths: Sequence[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        else:
            yield path


def long_functions(path: Path, limit: int) -> Iterator[tuple[int, str, int]]:
    """(line, qualified name, length) of each function in ``path`` longer than ``limit`` lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[int, str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > limit:
                    yield child.lineno, name, length
                yield from walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="files or folders")
    ap.add_argument("--max", type=int, default=80, help="longest allowed function, in lines (default 80)")
    args = ap.parse_args(argv)
    found = 0
    for path in python_files(args.paths):
        for line, name, length in long_functions(path, args.max):
            print(f"{path}:{line}: {name} is {length} lines (max {args.max})")
            found += 1
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
