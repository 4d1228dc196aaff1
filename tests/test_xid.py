"""The packaged XID catalogue: it parses, every entry has a severity, and the severity rules hold."""

from __future__ import annotations

import pytest

from collector import xid


def test_packaged_catalogue_parses_every_row() -> None:
    cat = xid.catalogue()
    # One row per code, 1 to 172, with no gaps.
    assert len(cat) == 172
    assert min(cat) == 1 and max(cat) == 172
    assert all(info.code == code for code, info in cat.items())
    assert all(info.mnemonic for info in cat.values())


def test_quoted_multiline_fields_are_joined() -> None:
    info = xid.lookup(13)
    assert info is not None
    assert info.mnemonic == "ROBUST_CHANNEL_GR_EXCEPTION / ROBUST_CHANNEL_GR_ERROR_SW_NOTIFY"
    assert info.description == "Graphics Engine Exception"
    assert info.investigatory_action == "WORKFLOW_XID_13"


def test_every_entry_has_a_severity_and_a_known_action() -> None:
    for code, info in xid.catalogue().items():
        assert xid.severity(code) in xid.SEVERITIES, code
        action = info.immediate_action
        assert action in xid.KNOWN_ACTIONS or action.startswith("WORKFLOW_"), (
            f"XID {code}: immediate action {action!r} is new; classify it in collector/xid.py")


@pytest.mark.parametrize(("code", "action", "want"), [
    (14, "IGNORE", "info"),
    (154, "XID_154", "info"),
    (13, "RESTART_APP", "warning"),
    (78, "UPDATE_SWFW", "warning"),
    (159, "CHECK_UVM", "warning"),
    (162, "", "warning"),
    (119, "RESET_GPU", "critical"),
    (79, "RESTART_BM", "critical"),
    (151, "RESTART_VM", "critical"),
    (1, "CONTACT_SUPPORT", "critical"),
    (54, "CHECK_MECHANICALS", "critical"),
    (48, "WORKFLOW_XID_48", "critical"),
    (144, "WORKFLOW_NVLINK5_ERR", "critical"),
], ids=lambda v: str(v) if v != "" else "empty")
def test_severity_follows_the_immediate_action(code: int, action: str, want: str) -> None:
    info = xid.lookup(code)
    assert info is not None
    assert info.immediate_action == action
    assert xid.severity(code) == want
    assert info.severity == want


def test_uncatalogued_code() -> None:
    assert xid.lookup(99999) is None
    assert xid.severity(99999) == "warning"
    assert xid.describe(99999) == "unknown XID 99999"


def test_describe_and_event() -> None:
    assert xid.describe(119) == "GSP_RPC_TIMEOUT: GSP RPC Timeout"
    ev = xid.xid_event(5, "node-1", "GPU-abc", 79, "pid=1, name=x, gone")
    assert (ev.ts_ns, ev.node, ev.entity, ev.kind, ev.code) == (5, "node-1", "GPU-abc", "xid", 79)
    assert ev.detail == ("ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS: GPU has fallen off the bus "
                         "(pid=1, name=x, gone)")


HEADER = "code,mnemonic,description,immediate_resolution,investigatory_resolution\n"


def test_parse_catalogue_literal() -> None:
    cat = xid.parse_catalogue(HEADER + '7,"A /\nB",desc,RESTART_APP,"Solo: X\nNot Solo: Y"\n'
                                       '7,DUP,dup,IGNORE,\n8,SHORT,short row\n')
    # Multi-line quoted fields are joined, the first row of a duplicated code wins, short rows pad with "".
    assert cat[7] == xid.XidInfo(7, "A / B", "desc", "RESTART_APP", "Solo: X Not Solo: Y")
    assert cat[8] == xid.XidInfo(8, "SHORT", "short row", "", "")


def test_parse_catalogue_rejects_a_bad_code() -> None:
    with pytest.raises(ValueError, match="line 2: bad code 'seven'"):
        xid.parse_catalogue(HEADER + "seven,X,x,IGNORE,\n")


def test_parse_catalogue_rejects_a_wrong_header() -> None:
    with pytest.raises(ValueError, match="header"):
        xid.parse_catalogue("code,name\n1,x\n")


@pytest.mark.parametrize(("action", "want"), [
    ("IGNORE", "info"), (" RESTART_APP ", "warning"), ("WORKFLOW_ANYTHING_NEW", "critical"),
    ("SOMETHING_NEW", "warning"),
])
def test_action_severity(action: str, want: str) -> None:
    assert xid.action_severity(action) == want
