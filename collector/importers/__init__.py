"""Importers: nvidia-smi logs, exposition snapshots, Prometheus ranges and kernel logs into Parquet traces.

Each importer maps its input onto the catalogue's metrics and writes the trace layout of collector/trace.py
through `TraceWriter`, which stages everything and commits by rename at the end, so a failed or
interrupted import leaves nothing behind. `run_import` is what `fleetwatch import` calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from collector.importers._writer import ImportSummary, InputError, TraceWriter
from collector.importers.exposition import import_exposition
from collector.importers.kernel_log import import_kernel_log
from collector.importers.nvidia_smi import import_nvidia_smi
from collector.importers.prometheus import import_prometheus, import_prometheus_async
from collector.importers.smi_q import import_smi_q

__all__ = [
    "IMPORTERS",
    "ImportSummary",
    "InputError",
    "TraceWriter",
    "import_exposition",
    "import_kernel_log",
    "import_nvidia_smi",
    "import_prometheus",
    "import_prometheus_async",
    "import_smi_q",
    "run_import",
]

# `fleetwatch import KIND`: the importers that read files (SOURCE...) take them first.
IMPORTERS: dict[str, Callable[..., ImportSummary]] = {
    "nvidia-smi": import_nvidia_smi,
    "smi-q": import_smi_q,
    "exposition": import_exposition,
    "kernel-log": import_kernel_log,
    "prometheus": import_prometheus,
}


def run_import(kind: str, sources: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str],
               **options: Any) -> ImportSummary:
    """Run one importer by its command-line name; options are its keyword arguments."""
    try:
        importer = IMPORTERS[kind]
    except KeyError:
        raise InputError(f"unknown importer {kind!r}; expected one of {', '.join(IMPORTERS)}") from None
    if kind == "prometheus":
        if sources:
            raise InputError("the prometheus importer reads --url, not SOURCE files")
        return importer(output, **options)
    if not sources:
        raise InputError(f"{kind}: no SOURCE file given")
    return importer(sources, output, **options)
