"""The layers stay apart: passes work on the IR's typed values and never import the spec
front end (which parses files); only the DumpIR instrument, which writes specs, may."""

from __future__ import annotations

import ast
from pathlib import Path

PASSES = Path(__file__).resolve().parent.parent / "grow_ir" / "passes"


def _spec_imports(path: Path) -> list[tuple[int, str]]:
    """(line, scope: ``<module>.Class.method``) of every import of grow_ir.spec in ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            scoped = isinstance(child, (ast.FunctionDef, ast.ClassDef))
            name = f"{where}.{child.name}" if scoped else where
            if (
                isinstance(child, ast.ImportFrom)
                and (child.module or "").startswith("grow_ir.spec")
            ) or (
                isinstance(child, ast.Import)
                and any(a.name.startswith("grow_ir.spec") for a in child.names)
            ):
                found.append((child.lineno, where))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_no_pass_imports_the_spec_front_end() -> None:
    offenders = {
        f"{p.name}:{line} ({where})"
        for p in sorted(PASSES.glob("*.py"))
        for line, where in _spec_imports(p)
        if not (p.name == "manager.py" and where.startswith("<module>.DumpIR."))
    }
    assert not offenders, f"passes importing grow_ir.spec: {sorted(offenders)}"


def test_the_check_sees_an_import() -> None:
    """The guard can fail: it finds the one import it allows."""
    assert [w for _, w in _spec_imports(PASSES / "manager.py")] == ["<module>.DumpIR.after"]
