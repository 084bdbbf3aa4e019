"""Every test checks something: a lint of the test files themselves, with ``ast``.

A test function (``test_*``, at module level or in a ``Test*`` class) must contain, outside
any function nested in it, at least one check:

- an ``assert`` statement;
- ``pytest.raises``, ``pytest.warns``, ``pytest.deprecated_call`` (as a context or a call)
  or ``pytest.fail``;
- a call of a function whose name starts with ``assert`` or ``check_`` (``np.testing.
  assert_allclose``, ``schemas.check_record``: they raise when the check fails);
- a call of a function defined in the same file (at module level, or nested in the test)
  that itself contains a check by these rules.

A test that only runs code passes as long as nothing raises, which is a smoke test at best;
the rule asks each test to state what it expects. It cannot judge whether an assertion is a
strong one (``assert 0 <= acc <= 1`` passes it); that is left to review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PYTEST_CHECKS = {"raises", "warns", "deprecated_call", "fail"}
CHECK_PREFIXES = ("assert", "check_")


def _called_name(call: ast.Call) -> tuple[str | None, str | None]:
    """(object name, function name) of ``f()``, ``obj.f()`` or ``a.b.f()``."""
    func = call.func
    if isinstance(func, ast.Name):
        return None, func.id
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        return owner, func.attr
    return None, None


def _own_nodes(function: ast.FunctionDef):
    """The nodes of ``function``'s body, not descending into functions or lambdas nested
    in it (their code runs only if they are called)."""
    nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
    stack = [node for node in function.body if not isinstance(node, nested)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, nested))


def _nested_functions(function: ast.FunctionDef) -> dict[str, ast.FunctionDef]:
    return {
        node.name: node
        for node in ast.walk(function)
        if node is not function and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def has_check(
    function: ast.FunctionDef,
    helpers: dict[str, ast.FunctionDef],
    seen: frozenset[str] = frozenset(),
) -> bool:
    """Whether ``function`` checks something (see the module docstring); ``helpers``: the
    functions of its file, by name."""
    local = {**helpers, **_nested_functions(function)}
    for node in _own_nodes(function):
        if isinstance(node, ast.Assert):
            return True
        if not isinstance(node, ast.Call):
            continue
        owner, name = _called_name(node)
        if name is None:
            continue
        if owner == "pytest" and name in PYTEST_CHECKS:
            return True
        if name.startswith(CHECK_PREFIXES):
            return True
        if owner is None and name in local and name not in seen:
            if has_check(local[name], helpers, seen | {name}):
                return True
    return False


def find_tests(tree: ast.Module):
    """The test functions of a module: ``test_*`` at module level and in ``Test*`` classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test_"
        ):
            yield node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            yield from (
                item
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                and item.name.startswith("test_")
            )


def unchecked_tests(source: str) -> list[str]:
    """``name (line N)`` of every test function in ``source`` that checks nothing."""
    tree = ast.parse(source)
    helpers = {
        node.name: node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    return [f"{f.name} (line {f.lineno})" for f in find_tests(tree) if not has_check(f, helpers)]


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_every_test_checks_something(path):
    assert unchecked_tests(path.read_text(encoding="utf-8")) == [], (
        f"{path.name}: tests without an assert, pytest.raises/warns/fail, or an "
        f"assert*/check_* call"
    )


def test_the_rule_tells_checks_from_mere_calls():
    source = """
import pytest
import numpy as np

def _run(x):
    return x + 1

def _expect_two(x):
    assert _run(x) == 2

class TestGroup:
    def test_method_runs_only(self):
        _run(1)

def test_assert():
    assert _run(1) == 2

def test_raises():
    with pytest.raises(ValueError):
        int("x")

def test_numpy_check():
    np.testing.assert_allclose(_run(1), 2)

def test_helper_that_asserts():
    _expect_two(1)

def test_runs_only():
    _run(1)

def test_assert_only_in_an_uncalled_closure():
    def inner():
        assert False
    _run(1)

def test_called_closure_that_asserts():
    def inner():
        assert _run(1) == 2
    inner()

def test_lambda_is_not_a_check():
    f = lambda: pytest.fail("never called")
    _run(1)
"""
    found = [entry.split(" (line ")[0] for entry in unchecked_tests(source)]
    assert found == [
        "test_method_runs_only",
        "test_runs_only",
        "test_assert_only_in_an_uncalled_closure",
        "test_lambda_is_not_a_check",
    ]


def test_the_code_keeps_its_style():
    """ruff, as configured in pyproject.toml ([tool.ruff]), finds nothing in the tree and
    would reformat nothing."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[test]'"
    for check in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        done = subprocess.run([ruff, *check], cwd=TESTS.parent, capture_output=True, text=True)
        assert done.returncode == 0, f"ruff {check[0]}: " + (done.stdout + done.stderr)[-3000:]


def test_the_files_run_first_exist():
    """conftest's LONGEST_FIRST names files that exist (a renamed one would silently fall
    back to the collection order)."""
    from conftest import LONGEST_FIRST

    assert [n for n in LONGEST_FIRST if not (TESTS / n).is_file()] == []
