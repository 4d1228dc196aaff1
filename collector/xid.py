"""NVIDIA's XID catalogue (packaged CSV): code → mnemonic, description, resolutions, and a severity.

The CSV is derived from leptonai/gpud `components/accelerator/nvidia/xid/catalog_generated.go`, which
mirrors NVIDIA's published XID catalogue (https://docs.nvidia.com/deploy/xid-errors/); see
collector/data/LICENSE.xid-catalog. Some mnemonics and resolutions span several lines inside quotes, so
it is read with the csv module, never split by hand.

Severity classifies the catalogue's *immediate* resolution:

- ``info``: IGNORE, or an action that only points at another XID (``XID_154``, GPU recovery action
  changed: informational by NVIDIA's own wording). Nothing to do.
- ``warning``: the application, not the GPU, needs attention: RESTART_APP, CHECK_APP/CUDA, CHECK_UVM,
  UPDATE_SWFW; and codes whose resolution the catalogue leaves empty (newer codes NVIDIA has not yet
  documented): surfaced, but not paged on, until someone classifies them.
- ``critical``: the GPU or the node needs an operator: RESET_GPU, RESTART_BM, RESTART_VM,
  CONTACT_SUPPORT, CHECK_MECHANICALS and every WORKFLOW_* (NVIDIA's multi-step hardware triage flows,
  e.g. WORKFLOW_XID_48 for double-bit ECC errors).

A code missing from the catalogue gets ``warning`` for the same reason as an empty resolution.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from collector.batch import Event

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")

CATALOGUE_RESOURCE = "xid-catalog.csv"

_INFO_ACTIONS = frozenset({"IGNORE", "XID_154"})
_WARNING_ACTIONS = frozenset({"RESTART_APP", "CHECK_APP/CUDA", "CHECK_UVM", "UPDATE_SWFW", ""})
_CRITICAL_ACTIONS = frozenset({"RESET_GPU", "RESTART_BM", "RESTART_VM", "CONTACT_SUPPORT",
                               "CHECK_MECHANICALS"})
# Every immediate action the catalogue is known to use (WORKFLOW_* aside): a test fails on a new one,
# so that a catalogue update makes someone classify it instead of it silently becoming a warning.
KNOWN_ACTIONS = _INFO_ACTIONS | _WARNING_ACTIONS | _CRITICAL_ACTIONS


@dataclass(frozen=True, slots=True)
class XidInfo:
    """One catalogue row: what the XID means and what NVIDIA says to do about it."""

    code: int
    mnemonic: str
    description: str
    immediate_action: str
    investigatory_action: str

    @property
    def severity(self) -> Severity:
        """The severity of this XID's immediate action (see the module docstring)."""
        return action_severity(self.immediate_action)


def action_severity(action: str) -> Severity:
    """Classify one immediate-resolution string; unknown non-workflow actions are warnings."""
    action = action.strip()
    if action in _INFO_ACTIONS:
        return "info"
    if action in _CRITICAL_ACTIONS or action.startswith("WORKFLOW_"):
        return "critical"
    return "warning"


def parse_catalogue(text: str) -> dict[int, XidInfo]:
    """Parse the catalogue CSV text into {code: XidInfo}; the first row wins on a duplicated code."""
    reader = csv.DictReader(io.StringIO(text))
    want = {"code", "mnemonic", "description", "immediate_resolution", "investigatory_resolution"}
    if reader.fieldnames is None or not want <= set(reader.fieldnames):
        raise ValueError(f"XID catalogue header must contain {sorted(want)}, got {reader.fieldnames}")
    out: dict[int, XidInfo] = {}
    for row in reader:
        get = {k: (v or "") for k, v in row.items() if k is not None}     # short rows read as ""
        try:
            code = int(get["code"])
        except ValueError:
            raise ValueError(f"XID catalogue line {reader.line_num}: bad code {get['code']!r}") from None
        # Multi-line mnemonics ("A /\nB") read better joined on one line in events and alerts.
        info = XidInfo(
            code=code,
            mnemonic=" ".join(get["mnemonic"].split()),
            description=" ".join(get["description"].split()),
            immediate_action=get["immediate_resolution"].strip(),
            investigatory_action=" ".join(get["investigatory_resolution"].split()),
        )
        out.setdefault(code, info)
    return out


@functools.cache
def catalogue() -> dict[int, XidInfo]:
    """The packaged catalogue, parsed once."""
    text = resources.files("collector").joinpath("data", CATALOGUE_RESOURCE).read_text(encoding="utf-8")
    return parse_catalogue(text)


def lookup(code: int) -> XidInfo | None:
    """The catalogue entry for `code`, or None for a code NVIDIA has not catalogued."""
    return catalogue().get(code)


def severity(code: int) -> Severity:
    """The severity of XID `code`: its catalogue entry's, or "warning" when it is not catalogued."""
    info = lookup(code)
    return info.severity if info is not None else "warning"


def describe(code: int) -> str:
    """A one-line human description: "MNEMONIC: description", or "unknown XID n"."""
    info = lookup(code)
    if info is None:
        return f"unknown XID {code}"
    return f"{info.mnemonic}: {info.description}"


def xid_event(ts_ns: int, node: str, entity: str, code: int, message: str = "") -> Event:
    """The events-table row for one XID: kind "xid", detail the catalogue text (and the driver's message)."""
    detail = describe(code)
    if message:
        detail = f"{detail} ({message})"
    return Event(ts_ns=ts_ns, node=node, entity=entity, kind="xid", code=code, detail=detail)
