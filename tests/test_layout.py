"""Meta-tests: every source module is tested, every registered source has its test module, and imports point
along the data flow."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import collector.sources
from fleetwatch.service import _import_sources

TESTS = Path(__file__).parent


def test_every_source_module_has_tests() -> None:
    test_text = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    modules = [m.name for m in pkgutil.iter_modules(collector.sources.__path__) if not m.name.startswith("_")]
    assert modules
    for name in modules:
        assert f"collector.sources.{name} import" in test_text, f"no test imports collector.sources.{name}"


def test_every_registered_source_is_importable_and_documented() -> None:
    from collector.source import REGISTRY

    _import_sources()
    readme = (TESTS.parent / "README.md").read_text()
    for name in ("gpu", "kernel_xid", "netdev", "infiniband", "rapl", "redfish"):
        assert name in REGISTRY, name
        assert f"  {name}:" in readme, f"README configuration reference lacks collector.{name}"


# Data flows one way: collector → predictor → alerts; dashboards read the catalogue; fleetwatch wires it all.
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "collector": {"collector"},
    "predictor": {"collector", "predictor"},
    "alerts": {"collector", "predictor", "alerts"},
    "dashboards": {"collector", "dashboards"},
}
PROJECT = {"collector", "predictor", "alerts", "dashboards", "fleetwatch", "bench", "tests"}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every import, skipping `if TYPE_CHECKING:` blocks (no runtime edge)."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def test_imports_point_along_the_data_flow() -> None:
    root = TESTS.parent
    bad = []
    for package, allowed in ALLOWED_IMPORTS.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, top in _imports(ast.parse(path.read_text(), str(path))):
                if top in PROJECT and top not in allowed:
                    bad.append(f"{path.relative_to(root)}:{line} imports {top}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)
