"""Upload the dashboards to a Grafana instance with grafana-client, overwriting by uid, reporting changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

Change = Literal["created", "updated", "unchanged"]
# Fields Grafana sets itself on save; they differ between our model and the stored copy without a real change.
_VOLATILE = ("id", "version")


@dataclass(frozen=True)
class PushResult:
    """What happened to one dashboard (or the folder)."""

    uid: str
    title: str
    change: Change


def _comparable(model: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model.items() if k not in _VOLATILE}


def ensure_folder(api: GrafanaApi, folder: str) -> PushResult:
    """Create the folder (uid and title `folder`) unless it exists."""
    for f in api.folder.get_all_folders():
        if f.get("uid") == folder:
            return PushResult(folder, f.get("title", folder), "unchanged")
    api.folder.create_folder(folder, uid=folder)
    return PushResult(folder, folder, "created")


def push_dashboard(api: GrafanaApi, model: dict[str, Any], folder: str) -> PushResult:
    """Upload one dashboard by uid with overwrite, unless Grafana already holds the same JSON."""
    uid = model["uid"]
    try:
        existing = api.dashboard.get_dashboard(uid)
    except GrafanaClientError as err:
        if err.status_code != 404:
            raise
        existing = None
    if existing is not None:
        same_json = _comparable(existing.get("dashboard", {})) == _comparable(model)
        same_folder = existing.get("meta", {}).get("folderUid") == folder
        if same_json and same_folder:
            return PushResult(uid, model.get("title", uid), "unchanged")
    payload = {"dashboard": {**model, "id": None}, "folderUid": folder, "overwrite": True,
               "message": "fleetwatch dashboards push"}
    api.dashboard.update_dashboard(payload)
    return PushResult(uid, model.get("title", uid), "created" if existing is None else "updated")


def push(url: str, token: str, models: list[dict[str, Any]], folder: str = "fleetwatch",
         timeout: float = 10.0) -> list[PushResult]:
    """Ensure the folder, then push every dashboard; the folder's result comes first."""
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    results = [ensure_folder(api, folder)]
    results.extend(push_dashboard(api, m, folder) for m in models)
    return results
