"""The layout's rules, checked on the source itself (issue 15).

- docs/architecture.md names every module and every family, so it cannot fall behind.
- No function in src/ftmem is longer than 80 lines.
- Family names appear only in the family files and the config readers: the core keys
  its rules on structure (an Architecture field, a family flag, a linear's roles).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ftmem import families

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ftmem"
MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py")
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    return path.relative_to(SRC).with_suffix("").as_posix()


def test_every_module_and_family_is_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([\w/.]+)`", doc)) | set(re.findall(r"\*\*(\w+)/\*\*", doc))
    missing = []
    for path in MODULES:
        name = _module_name(path)
        parent = name.split("/")[0] if "/" in name else None
        if name in named or (path.stem in named and parent in named | {None}):
            continue
        if parent == "families":
            continue  # the families are checked below
        missing.append(name)
    assert not missing, f"docs/architecture.md does not describe: {missing}"
    assert "families/" in doc
    for name in ("_llama", "_config"):
        assert f"`{name}`" in doc


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


@pytest.mark.parametrize("path", [*MODULES, SRC / "families" / "__init__.py"], ids=_module_name)
def test_no_function_is_longer_than_80_lines(path):
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in _functions(path)
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{_module_name(path)}: {', '.join(long)}"


# Where a family's name may appear: its own file, the readers of configs that name
# families (frameworks map torchtune's model builders), and tests.
NAMES_ALLOWED_IN = {"families", "frameworks", "measure"}


FAMILY_NAME = re.compile("|".join(families.names()))


def _family_names_in(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are a family's name (``arch.family == "gpt2"``, a set of
    families that support something): how rules used to key on families; they key on
    the family's flags now."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and FAMILY_NAME.fullmatch(node.value)
    ]


def test_the_core_never_names_a_family():
    offenders = [
        f"{_module_name(path)}:{line} ({name})"
        for path in MODULES
        if _module_name(path).split("/")[0] not in NAMES_ALLOWED_IN
        for line, name in _family_names_in(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not offenders, f"family names compared in the core: {offenders}"


def test_the_family_check_finds_a_comparison():
    code = 'def f(arch):\n    return arch.family in ("gpt2", "falcon") or arch.x == "gpt"\n'
    assert sorted(_family_names_in(ast.parse(code))) == [(2, "falcon"), (2, "gpt2")]
