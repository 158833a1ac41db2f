"""What the import contract (setup.cfg ``[importlinter]``) cannot see.

``lint-imports`` checks which module imports which; these tests check the
rest of docs/architecture.rst's rules by reading the source: no layer below
``app`` reaches for the global reactor, the domain never prints (it returns
values; the CLI and the console say them), and no core module names a plugin
or reaches into one through ``sys.modules``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bankgate"
BELOW_APP = ["canon", "codec", "store", "domain", "wire"]


def _modules(*layers: str) -> list[Path]:
    return sorted(p for layer in layers for p in (PACKAGE / layer).rglob("*.py"))


def _imports(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("path", _modules(*BELOW_APP), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_global_reactor_below_app(path):
    imports = _imports(ast.parse(path.read_text(encoding="utf-8")))
    assert "twisted.internet.reactor" not in imports, (
        f"{path.relative_to(ROOT)} imports the global reactor: take one as an argument")


@pytest.mark.parametrize("path", _modules("domain", "store", "codec", "canon"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_printing_below_the_interfaces(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "print"]
    assert not calls, f"{path.relative_to(ROOT)} prints (lines {calls}): return or log instead"


_PLUGIN_NAME = re.compile(r"""["']ref-(fixed|delim|iso8583|xml)["']""")


@pytest.mark.parametrize("path", _modules(*BELOW_APP, "devtools"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_core_module_names_a_plugin(path):
    """Bank knowledge lives in plugins/: the core asks a codec what it declares."""
    text = path.read_text(encoding="utf-8")
    code = "\n".join(ln.split("#", 1)[0] for ln in text.splitlines())
    tree = ast.parse(text)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                    ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    named = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and id(n) not in docstrings
             and _PLUGIN_NAME.fullmatch(repr(n.value))]
    assert not named, f"{path.relative_to(ROOT)} names a plugin (lines {named})"
    assert "sys.modules" not in code or path.name == "registry.py", (
        f"{path.relative_to(ROOT)} reaches into modules through sys.modules")
