"""The docs' references to tests stay true: every `tests/test_x.py::test_name` that README.md or a page
of docs/ cites (outside code blocks, which quote measured output) names a test function defined at the
top level of that file, which CI runs: not marked skip, skipif (but for one that skips only where a GPU
is), xfail or cuda (CI has no GPU); every file cited alone (`tests/test_x.py`) exists. The sentence
around a reference says what that test checks; a renamed, removed or skipped test fails here instead of
leaving the claim without its test."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEST_ID = re.compile(r"tests/(test_\w+\.py)::(\w+)")
TEST_FILE = re.compile(r"tests/(\w+\.py)(?!::)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
NOT_IN_CI = {"skip", "skipif", "xfail", "cuda"}


def _prose(path: Path) -> str:
    return FENCE.sub("", path.read_text())


def _references() -> list[tuple[str, str, str]]:
    return sorted({(path.name, file, name) for path in DOCS for file, name in TEST_ID.findall(_prose(path))})


# A skip where a GPU is: CI has none, so the test runs there.
RUNS_IN_CI = {"torch.cuda.is_available()"}


def _marks(decorator: ast.expr) -> set[str]:
    """`pytest.mark.NAME` or `pytest.mark.NAME(...)` -> {NAME} (a skipif on RUNS_IN_CI: none)."""
    node = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
        if node.attr == "skipif" and isinstance(decorator, ast.Call) and decorator.args \
                and ast.unparse(decorator.args[0]) in RUNS_IN_CI:
            return set()
        return {node.attr}
    return set()


def _module_marks(tree: ast.Module) -> set[str]:
    marks: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            for value in values:
                marks |= _marks(value)
    return marks


def test_the_docs_cite_tests_by_id():
    assert len(_references()) >= 10  # the syntax this file reads is the one the docs use


@pytest.mark.parametrize("page, file, name", _references())
def test_each_cited_test_exists_and_runs_in_ci(page, file, name):
    path = REPO / "tests" / file
    assert path.is_file(), f"{page} cites tests/{file}::{name}: no such file"
    tree = ast.parse(path.read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert name in functions, f"{page} cites tests/{file}::{name}: no such test"
    marks = set().union(*(_marks(d) for d in functions[name].decorator_list))
    # a module-wide skipif on a missing torch feature (gloo) is conditional: CI has it
    marks |= _module_marks(tree) - {"skipif"}
    assert not marks & NOT_IN_CI, f"{page} cites tests/{file}::{name}, marked {sorted(marks & NOT_IN_CI)}"


def test_each_cited_test_file_exists():
    cited = [(path.name, file) for path in DOCS for file in TEST_FILE.findall(_prose(path))]
    # The docs cite 28 files alone (counted when this floor was set): fewer means the parsing missed some.
    assert len(cited) >= 28, cited
    for page, file in cited:
        assert (REPO / "tests" / file).is_file(), f"{page} cites tests/{file}: no such file"
