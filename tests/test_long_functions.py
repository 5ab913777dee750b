"""tools/long_functions.py, and the rule it checks: no function over 60 lines anywhere in rcpu_lightning/."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))
from long_functions import long_functions, main  # noqa: E402


def _function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}():\n{body}"


def test_lists_exactly_the_functions_over_the_limit_with_their_qualified_names(tmp_path, capsys):
    source = (_function("fits", 59) + "\n\n" + _function("too_long", 60) + "\n\nclass Holder:\n"
              + _function("method", 61, indent="    ") + "\n" + _function("short", 3, indent="    "))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(source)
    found = long_functions([tmp_path])
    assert [(name, lines) for _, _, name, lines in found] == [("too_long", 61), ("Holder.method", 62)]
    assert main([str(tmp_path)]) == 1 and "mod.py:" in capsys.readouterr().out
    assert main(["--max-lines", "62", str(tmp_path)]) == 0


def test_no_function_over_60_lines_in_the_package():
    found = long_functions([REPO_ROOT / "rcpu_lightning"])
    assert found == [], "\n".join(f"{f}:{line} {name} ({n} lines)" for f, line, name, n in found)
