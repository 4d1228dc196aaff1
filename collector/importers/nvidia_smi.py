"""Import `nvidia-smi --query-gpu=... --format=csv` logs into a trace, mapping fields through the catalogue.

Handles what nvidia-smi writes: units in headers (`power.draw [W]`) and values (`250.12 W`, `81559 MiB`,
`45 %`, `1410 MHz`) or neither (`nounits`), no header at all (`noheader`: pass the field list), headers
repeated when `-l` logging restarts, several GPUs interleaved, `[N/A]`, `N/A`, `[Not Supported]` and
other bracketed statuses (values that are unavailable, not errors), hex bitmasks (0x...), `P0`..`P15`,
Yes/No, Active/Not Active, Enabled/Disabled. Timestamps (`2024/05/01 12:00:00.123`) are the host's local
wall clock; --timezone says which zone that was (default UTC).

Fields map through catalogue.BY_SMI (value × smi_scale gives the base unit); a few nvidia-smi spellings
are aliases of the catalogue's (`clocks.current.sm` is `clocks.sm`). Fields the catalogue does not know
are ignored and counted per field. Identity comes from uuid, index, pci.bus_id, name, driver_version
and hostname columns when present.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collector.batch import Entity
from collector.catalogue import BY_SMI
from collector.importers._writer import (
    ImportSummary,
    InputError,
    Reporter,
    Series,
    TraceWriter,
    input_files,
    parse_timezone,
    progress_bar,
    wall_to_ns,
)

# nvidia-smi accepts several spellings of some fields; the catalogue uses one.
ALIASES: dict[str, str] = {
    "clocks.current.sm": "clocks.sm",
    "clocks.current.memory": "clocks.mem",
    "clocks.current.graphics": "clocks.gr",
    "clocks.current.video": "clocks.video",
    "clocks_throttle_reasons.active": "clocks_event_reasons.active",   # before driver 535
    "gpu_uuid": "uuid",
    "gpu_name": "name",
    "gpu_bus_id": "pci.bus_id",
    "gpu_serial": "serial",
}
IDENTITY_FIELDS = frozenset({"timestamp", "uuid", "index", "pci.bus_id", "name", "driver_version", "hostname"})
KNOWN_FIELDS = frozenset(BY_SMI) | frozenset(ALIASES) | IDENTITY_FIELDS
DEFAULT_NODE = "imported"
# A value nvidia-smi prints instead of a reading; "[GPU is lost]" also says the GPU fell off the bus.
GPU_LOST = "[GPU is lost]"
_UNAVAILABLE = frozenset({"", "N/A", "n/a", "NA", "Unknown"})
_WORDS: dict[str, float] = {
    "yes": 1.0, "no": 0.0, "active": 1.0, "not active": 0.0, "enabled": 1.0, "disabled": 0.0,
    "true": 1.0, "false": 0.0, "on": 1.0, "off": 0.0,
}
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*(?: \[[^\]]*\])?$")
_HEADER_RE = re.compile(r"^(?P<field>[A-Za-z][A-Za-z0-9_.]*)(?: \[(?P<unit>[^\]]*)\])?$")
_NUMBER_RE = re.compile(r"^(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[A-Za-z%/()]+)?$")
_PSTATE_RE = re.compile(r"^P(\d{1,2})$")
_TS_RE = re.compile(r"^(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")


def canonical_field(name: str) -> str:
    """The catalogue's spelling of an nvidia-smi field name."""
    return ALIASES.get(name, name)


def split_header(cell: str) -> tuple[str, str | None]:
    """("power.draw", "W") for "power.draw [W]"; (cell, None) for a header cell without a unit."""
    m = _HEADER_RE.match(cell)
    if m is None:
        return cell, None
    return m.group("field"), m.group("unit")


def is_unavailable(text: str) -> bool:
    """Whether a value is nvidia-smi's way of saying there is none ([N/A], [Not Supported], N/A, ...)."""
    return text in _UNAVAILABLE or (text.startswith("[") and text.endswith("]"))


def parse_value(text: str, unit: str | None = None) -> float | None:
    """A reading as a float (None when unavailable); ValueError naming the text when it is not a number.

    Accepts numbers with or without a unit suffix, hex (0x1F), performance states (P0 → 0) and
    Yes/No, Active/Not Active, Enabled/Disabled (1/0).
    """
    original = text
    if unit and text.endswith(unit) and text[-len(unit) - 1:-len(unit)] == " ":
        text = text[:-len(unit) - 1]
    try:
        return float(text)
    except ValueError:
        pass
    if is_unavailable(text):
        return None
    if text[:2] in ("0x", "0X"):
        try:
            return float(int(text, 16))
        except ValueError:
            raise ValueError(f"cannot parse {original!r} as a number") from None
    m = _NUMBER_RE.match(text)
    if m is not None:
        return float(m.group("num"))
    m = _PSTATE_RE.match(text)
    if m is not None:
        return float(m.group(1))
    word = _WORDS.get(text.lower())
    if word is not None:
        return word
    raise ValueError(f"cannot parse {original!r} as a number")


class TimestampParser:
    """nvidia-smi timestamps (`2024/05/01 12:00:00.123`, local wall clock in tz) to Unix nanoseconds.

    The zone offset is looked up once per wall-clock hour: logs have many rows per hour and the
    datetime arithmetic is the slow part.
    """

    def __init__(self, tz: dt.tzinfo | None) -> None:
        self.tz = tz
        self._hours: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        m = _TS_RE.match(text)
        if m is None:
            raise ValueError(f"cannot parse {text!r} as a timestamp (expected YYYY/MM/DD HH:MM:SS.mmm)")
        key = text[:13]
        base = self._hours.get(key)
        if base is None:
            y, mo, d, h = (int(m.group(i)) for i in range(1, 5))
            try:
                base = wall_to_ns(dt.datetime(y, mo, d, h), self.tz)
            except ValueError as err:
                raise ValueError(f"cannot parse {text!r} as a timestamp ({err})") from None
            self._hours[key] = base
        minute, second = int(m.group(5)), int(m.group(6))
        if minute > 59 or second > 60:
            raise ValueError(f"cannot parse {text!r} as a timestamp (minute or second out of range)")
        frac = m.group(7)
        ns = int(frac.ljust(9, "0")) if frac else 0
        return base + (minute * 60 + second) * 10**9 + ns


@dataclass
class _Column:
    """A header column mapped onto a catalogue metric."""

    index: int
    cell: str                  # the header cell as written, for error messages
    metric: str
    scale: float
    unit: str | None
    suffix: str | None = None  # " W" for unit "W": what the fast path strips before float()

    def __post_init__(self) -> None:
        self.suffix = f" {self.unit}" if self.unit else None


@dataclass
class _Header:
    """One header line's layout (a log may restart its header)."""

    cells: list[str]
    columns: list[_Column]
    unknown: list[str]
    ts: int | None
    uuid: int | None
    index: int | None
    pci: int | None
    name: int | None
    driver: int | None
    hostname: int | None
    rows: int = 0
    ident: tuple[int, ...] = ()            # indexes of the identity cells present
    entities: dict[tuple[str, ...], Entity] = field(default_factory=dict)
    handles: dict[int, list[Series]] = field(default_factory=dict)   # id(entity) → one Series per column


def parse_header(cells: Sequence[str]) -> _Header:
    """Map a header line's cells onto catalogue metrics and identity columns."""
    columns: list[_Column] = []
    unknown: list[str] = []
    pos: dict[str, int] = {}
    for i, cell in enumerate(cells):
        name, unit = split_header(cell)
        name = canonical_field(name)
        spec = BY_SMI.get(name)
        if name in IDENTITY_FIELDS:
            pos.setdefault(name, i)
        elif spec is not None and spec.record:
            columns.append(_Column(i, cell, spec.name, spec.smi_scale, unit))
        else:
            unknown.append(name)
    h = _Header(list(cells), columns, unknown, pos.get("timestamp"), pos.get("uuid"), pos.get("index"),
                pos.get("pci.bus_id"), pos.get("name"), pos.get("driver_version"), pos.get("hostname"))
    h.ident = tuple(i for i in (h.hostname, h.uuid, h.pci, h.index, h.name, h.driver) if i is not None)
    return h


def looks_like_header(cells: Sequence[str]) -> bool:
    """Whether a line is a header: every cell a field name (with an optional [unit]), one of them known."""
    return all(_FIELD_RE.match(c) for c in cells) and any(
        canonical_field(split_header(c)[0]) in KNOWN_FIELDS for c in cells)


def parse_fields_option(fields: str) -> list[str]:
    """The header cells for a noheader log from --fields ("timestamp,uuid,power.draw" or "--query-gpu=...")."""
    text = fields.strip().removeprefix("--query-gpu=").removeprefix("--query-gpu ")
    cells = [c.strip() for c in text.split(",") if c.strip()]
    if not cells:
        raise InputError("--fields is empty")
    return cells


class CsvImporter:
    """Reads nvidia-smi CSV logs into a TraceWriter."""

    def __init__(self, writer: TraceWriter, summary: ImportSummary, reporter: Reporter, node: str | None = None,
                 fields: str | None = None, tz: dt.tzinfo | None = dt.UTC) -> None:
        self.writer = writer
        self.summary = summary
        self.reporter = reporter
        self.node = node or DEFAULT_NODE
        self.default_cells = parse_fields_option(fields) if fields else None
        self.parse_ts = TimestampParser(tz)
        self._entities: dict[tuple[str, ...], Entity] = {}
        self._order: dict[tuple[str, str], int] = {}      # (node, gpu key) → first-seen position

    def _entity(self, h: _Header, cells: list[str]) -> Entity:
        def cell(i: int | None) -> str:
            if i is None:
                return ""
            v = cells[i]
            return "" if is_unavailable(v) else v

        host = cell(h.hostname) or self.node
        uuid, pci, index = cell(h.uuid), cell(h.pci), cell(h.index)
        key = (host, uuid, pci, index, cell(h.name), cell(h.driver))
        e = self._entities.get(key)
        if e is not None:
            return e
        if index and not index.isdigit():
            raise ValueError(f"field 'index': cannot parse {index!r} as a GPU index")
        gpu_key = uuid or pci or index
        # Without an index column GPUs take their order of first appearance: nvidia-smi prints them by index.
        pos = self._order.setdefault((host, gpu_key), sum(1 for k in self._order if k[0] == host))
        idx = index or str(pos)
        entity_id = uuid or pci or f"gpu{idx}"
        e = Entity(kind="gpu", node=host, id=entity_id,
                   labels=(host, idx, uuid, pci, f"nvidia{idx}", key[4], key[5]),
                   dcgm_labels=(idx, uuid, pci, f"nvidia{idx}", key[4], host, key[5]))
        self._entities[key] = e
        self.writer.add_entity(e)
        return e

    def _handles(self, h: _Header, e: Entity) -> list[Series]:
        hs = h.handles.get(id(e))
        if hs is None:       # entities live in self._entities for the whole import, so ids stay unique
            hs = h.handles[id(e)] = [self.writer.series(e.node, e.id, c.metric) for c in h.columns]
        return hs

    def read(self, path: Path, lines: Iterable[str], advance: Callable[[int], None] | None = None) -> None:
        """Import one log's lines (path names it in messages)."""
        where = str(path)
        header: _Header | None = parse_header(self.default_cells) if self.default_cells else None
        headers: list[_Header] = [header] if header is not None else []
        reporter = self.reporter
        summary = self.summary
        writer = self.writer
        parse_ts = self.parse_ts
        nbytes = 0
        for lineno, raw in enumerate(lines, 1):
            nbytes += len(raw)
            if advance is not None and nbytes >= 1 << 20:
                advance(nbytes)
                nbytes = 0
            line = raw.rstrip("\r\n")
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip() or line.startswith("#"):
                continue
            cells = [c.strip() for c in line.split(",")]
            if looks_like_header(cells):
                header = parse_header(cells)
                headers.append(header)
                if header.ts is None:
                    raise InputError(f"{where}:{lineno}: the header has no 'timestamp' field: rows cannot be "
                                     "placed in time (add timestamp to --query-gpu)")
                if header.uuid is None and header.pci is None and header.index is None:
                    raise InputError(f"{where}:{lineno}: the header has no uuid, pci.bus_id or index field: "
                                     "GPUs cannot be told apart")
                continue
            if header is None:
                reporter.bad(f"{where}:{lineno}: a data line before any header (a noheader log needs "
                             "--fields with its --query-gpu list)")
                continue
            if len(cells) != len(header.cells):
                reporter.bad(f"{where}:{lineno}: expected {len(header.cells)} fields as in the header, "
                             f"got {len(cells)}")
                continue
            assert header.ts is not None
            try:
                ts = parse_ts(cells[header.ts])
            except ValueError as err:
                reporter.bad(f"{where}:{lineno}: field {header.cells[header.ts]!r}: {err}")
                continue
            # The raw identity cells key a per-header cache: most rows repeat a GPU already seen.
            ident = tuple([cells[i] for i in header.ident])
            entity = header.entities.get(ident)
            if entity is None:
                try:
                    entity = header.entities[ident] = self._entity(header, cells)
                except ValueError as err:
                    reporter.bad(f"{where}:{lineno}: {err}")
                    continue
            # Parse the whole row before adding any of it, so a skipped row leaves no value behind.
            # float() on the cell minus its unit suffix is the fast path; parse_value the general one.
            vals: list[float | None] = []
            problem = None
            for c in header.columns:
                text = cells[c.index]
                suffix = c.suffix
                try:
                    vals.append(float(text[:-len(suffix)] if suffix and text.endswith(suffix) else text))
                except ValueError:
                    try:
                        vals.append(parse_value(text, c.unit))
                    except ValueError as err:
                        problem = f"{where}:{lineno}: field {c.cell!r}: {err}"
                        break
            if problem is not None:
                reporter.bad(problem)
                continue
            header.rows += 1
            n = 0
            lost = False
            for s, c, v in zip(self._handles(header, entity), header.columns, vals, strict=True):
                if v is None:
                    summary.missing += 1
                    lost = lost or cells[c.index] == GPU_LOST
                    continue
                s.ts.append(ts)
                s.values.append(v * c.scale)
                n += 1
            if lost:
                writer.series(entity.node, entity.id, "fleetwatch_gpu_lost").add(ts, 1.0)
                n += 1
            writer.added(n)
        if advance is not None and nbytes:
            advance(nbytes)
        for h in headers:
            for name in h.unknown:
                summary.unknown[name] += h.rows


def import_nvidia_smi(sources: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                      on_error: str = "fail", node: str | None = None, fields: str | None = None,
                      timezone: str | None = None, progress: bool = True,
                      flush_samples: int | None = None) -> ImportSummary:
    """Import nvidia-smi --query-gpu CSV logs into the trace at `output`; the summary.

    InputError (nothing written) on malformed input under on_error="fail".
    """
    summary = ImportSummary(kind="nvidia-smi")
    reporter = Reporter(summary, on_error)
    tz = parse_timezone(timezone)
    paths = input_files(sources)
    total = sum(p.stat().st_size for p in paths)
    kwargs = {} if flush_samples is None else {"flush_samples": flush_samples}
    with TraceWriter(output, **kwargs) as writer:
        importer = CsvImporter(writer, summary, reporter, node=node, fields=fields, tz=tz)
        bar = progress_bar(total, "nvidia-smi") if progress else None
        try:
            for p in paths:
                with open(p, encoding="utf-8", errors="replace", newline="") as f:
                    importer.read(p, f, bar.update if bar is not None else None)
                summary.files += 1
        finally:
            if bar is not None:
                bar.close()
        writer.commit(summary)
    return summary
