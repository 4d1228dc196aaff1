"""Fuzzing the receiver: random bodies and headers never crash it, never get a 5xx, never run an action."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.alerts.remediation.helpers import ThreadedReceiver, alert, payload, post

AUTH = "Bearer t0ken"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=60)


def _mutated_payload(draw: Any) -> bytes:
    doc = payload(alert())
    first = doc["alerts"][0]
    for _ in range(draw(st.integers(1, 3))):
        target = doc if draw(st.booleans()) else first
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            target.pop(key)
        else:
            target[key] = draw(json_values)
    return json.dumps(doc).encode()


@st.composite
def requests(draw: Any) -> tuple[bytes, dict[str, str], bool]:
    """(body, headers, whether the body is a valid payload) — valid payloads only with a wrong credential."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "valid-bad-auth"]))
    if kind == "bytes":
        body = draw(st.binary(max_size=300))
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "mutated":
        body = _mutated_payload(draw)
    else:
        body = json.dumps(payload(alert())).encode()
    headers = draw(st.dictionaries(st.sampled_from(["X-Random", "Content-Type", "X-Fleetwatch-Signature",
                                                    "Authorization", "Accept"]), header_text, max_size=3))
    if kind == "valid-bad-auth":
        if headers.get("Authorization") == AUTH:
            headers.pop("Authorization")
        headers.setdefault("Authorization", "Bearer " + draw(header_text))
    elif "Authorization" not in headers and draw(st.booleans()):
        headers["Authorization"] = AUTH
    return body, headers, kind == "valid-bad-auth"


@pytest.fixture(scope="module")
def rx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedReceiver]:
    r = ThreadedReceiver(tmp_path_factory.mktemp("fuzz"), hmac_secret=None)
    yield r
    r.close()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(req=requests())
def test_fuzzed_requests_get_4xx_and_run_nothing(rx: ThreadedReceiver, req: tuple[bytes, dict[str, str], bool]) -> None:
    body, headers, _ = req
    status, resp = post(rx.url, body, headers)
    assert 400 <= status < 500 or status == 200, (status, resp)
    if status == 200:
        # Only a body that is a valid payload with the right token gets here; it is then a real alert.
        assert headers.get("Authorization", "").strip() == AUTH
        json.loads(body)
        return
    assert isinstance(resp, dict) and resp["reason"]


def test_after_fuzzing_no_invalid_request_ran_an_action(rx: ThreadedReceiver) -> None:
    rx.idle()
    accepted = {r["request"] for r in rx.rig.audit("request") if r["result"] == "accepted"}
    ran = [r for r in rx.rig.audit("decision") if r.get("result") == "run"]
    assert all(r["request"] in accepted for r in ran)
    assert len(rx.rig.calls_made()) == len([r for r in rx.rig.audit("outcome")])
    rejected = [r for r in rx.rig.audit("request") if r["result"] != "accepted"]
    assert len(rejected) > 100     # the fuzzer did reach the refusal paths
