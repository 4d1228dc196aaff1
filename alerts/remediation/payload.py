"""Alertmanager's webhook payload (version 4) as a strict pydantic model: a bad body is named, never guessed."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

# Prometheus label names (https://prometheus.io/docs/concepts/data_model/#metric-names-and-labels).
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Alertmanager fingerprints are 16 hex digits (model.Fingerprint); allow up to 64 for other senders.
_FINGERPRINT = r"^[0-9a-f]{1,64}$"
MAX_ALERTS = 1000              # Alertmanager's max_alerts: 0 means unlimited; we still bound the work per request
MAX_LABELS = 64
MAX_VALUE_CHARS = 4096

Fingerprint = Annotated[StrictStr, Field(pattern=_FINGERPRINT)]


class PayloadError(ValueError):
    """The body is not a valid Alertmanager webhook payload; the message says what is wrong."""


def _check_labels(v: dict[str, str], what: str) -> dict[str, str]:
    if len(v) > MAX_LABELS:
        raise ValueError(f"{what}: at most {MAX_LABELS} entries, got {len(v)}")
    for k, val in v.items():
        if not _LABEL_NAME.match(k):
            raise ValueError(f"{what}: {k!r} is not a valid label name")
        if len(val) > MAX_VALUE_CHARS:
            raise ValueError(f"{what}: value of {k!r} is longer than {MAX_VALUE_CHARS} characters")
    return v


class WebhookAlert(BaseModel):
    """One alert of the payload, as Alertmanager's template.Alert serialises it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    status: Literal["firing", "resolved"]
    labels: dict[StrictStr, StrictStr]
    annotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime
    generatorURL: StrictStr = ""
    fingerprint: Fingerprint

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        if "alertname" not in v:
            raise ValueError("labels must contain alertname")
        return _check_labels(v, "labels")

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_labels(v, "annotations")

    @property
    def alertname(self) -> str:
        """The alert's name label."""
        return self.labels["alertname"]


class WebhookPayload(BaseModel):
    """The whole webhook body (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config).

    Unknown top-level keys are ignored (a newer Alertmanager may add some without bumping version "4");
    every known key is type-checked strictly.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    version: Literal["4"]
    groupKey: StrictStr
    truncatedAlerts: StrictInt = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: StrictStr
    groupLabels: dict[StrictStr, StrictStr]
    commonLabels: dict[StrictStr, StrictStr]
    commonAnnotations: dict[StrictStr, StrictStr]
    externalURL: StrictStr
    alerts: list[WebhookAlert] = Field(min_length=1, max_length=MAX_ALERTS)


def parse_payload(body: bytes) -> WebhookPayload:
    """Decode and validate a webhook body; PayloadError names the first problems found."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PayloadError(f"body is not JSON: {err}") from None
    except RecursionError:
        raise PayloadError("body is not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise PayloadError(f"body must be a JSON object, got {type(data).__name__}")
    if "version" in data and data["version"] != "4":
        raise PayloadError(f"unsupported payload version {data['version']!r} (expected \"4\")")
    try:
        return WebhookPayload.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors()[:5]:
            where = ".".join(str(p) for p in e["loc"]) or "body"
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        more = f" (and {err.error_count() - 5} more)" if err.error_count() > 5 else ""
        raise PayloadError("; ".join(problems) + more) from None
