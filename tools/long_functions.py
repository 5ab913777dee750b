"""List the functions (and methods) longer than a limit, from ``def`` to their last line, docstrings included.

    python tools/long_functions.py [--max-lines 60] PATH [PATH ...]

PATHs are files or folders (searched for ``*.py``). Prints ``file:line name (N lines)`` per function over
the limit and exits 1 if there is any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

DEFAULT_MAX_LINES = 60


def python_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(path.rglob("*.py"))
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"{str(path)!r} does not exist")


def long_functions(paths: Iterable[str | Path], max_lines: int = DEFAULT_MAX_LINES) -> list[tuple[Path, int, str, int]]:
    """``(file, first line, qualified name, lines)`` of each function over ``max_lines`` lines; a function's
    lines run from its ``def`` (decorators excluded) to its last statement."""
    found = []
    for file in python_files(paths):
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for node, name in _functions(tree, ""):
            lines = node.end_lineno - node.lineno + 1
            if lines > max_lines:
                found.append((file, node.lineno, name, lines))
    return found


def _functions(node: ast.AST, prefix: str) -> Iterator[tuple[ast.AST, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child, prefix + child.name
            yield from _functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES)
    args = p.parse_args(argv)
    found = long_functions(args.paths, args.max_lines)
    for file, line, name, lines in found:
        print(f"{file}:{line} {name} ({lines} lines)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
