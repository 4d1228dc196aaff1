"""Meta-tests: every source module is tested, and every registered source has its test module."""

from __future__ import annotations

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
