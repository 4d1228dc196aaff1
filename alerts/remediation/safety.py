"""Safety gates in front of every action: rate limits, blast radius, cooldown, idempotency — in that order.

Every gate answers with the reason it refuses, which goes to the audit log. Dry-run passes through the
same gates (and consumes them), so a dry-run audit shows exactly what enforce mode would have done.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from collector.clock import Clock


@dataclass(frozen=True)
class Limits:
    """Limits on what remediation may do; defaults are deliberately tight (raise them once trusted).

    - global_max: actions of any kind per global_window. 10/h: a healthy fleet needs few automatic actions;
      more is a storm to stop and look at.
    - per_action_max: runs of one action per its window (an action may override it). 5/h.
    - blast_max_nodes / blast_max_fraction: distinct targets acted on within blast_window. 2 nodes and
      10 %: cordoning more at once would take more capacity away than the faults themselves do.
    - cooldown: the same action on the same target again only after this long (30 min), so a flapping
      alert cannot cordon/uncordon a node in a loop.
    - fleet_nodes: the fleet size for blast_max_fraction; None = the nodes fleetwatch sees. Unknown (0)
      refuses, rather than guessing a fleet large enough to allow anything.
    """

    global_max: int = 10
    global_window: float = 3600.0
    per_action_max: int = 5
    per_action_window: float = 3600.0
    blast_max_nodes: int = 2
    blast_max_fraction: float = 0.10
    blast_window: float = 3600.0
    cooldown: float = 1800.0
    fleet_nodes: int | None = None


def _prune(q: deque[Any], now: float, window: float, key: Callable[[Any], float] = lambda t: t) -> None:
    while q and now - key(q[0]) >= window:
        q.popleft()


@dataclass
class SafetyGate:
    """Admits or refuses one action on one target at the clock's current time (one event loop: no locking)."""

    limits: Limits
    clock: Clock
    fleet_size: Callable[[], int] = lambda: 0
    _global: deque[float] = field(default_factory=deque)
    _per_action: dict[str, deque[float]] = field(default_factory=dict)
    _targets: deque[tuple[float, str]] = field(default_factory=deque)
    _last: dict[tuple[str, str], float] = field(default_factory=dict)

    def _now(self) -> float:
        return self.clock.now_ns() / 1e9

    def fleet(self) -> int:
        """The fleet size the blast-radius fraction is taken of."""
        return self.limits.fleet_nodes if self.limits.fleet_nodes is not None else self.fleet_size()

    def admit(self, action: str, target: str, per_action_max: int | None = None,
              cooldown: float | None = None) -> str | None:
        """None when the action may run now (and it is counted), else the reason it may not."""
        lim, now = self.limits, self._now()
        _prune(self._global, now, lim.global_window)
        pa = self._per_action.setdefault(action, deque())
        _prune(pa, now, lim.per_action_window)
        _prune(self._targets, now, lim.blast_window, key=lambda e: e[0])
        if len(self._global) >= lim.global_max:
            return f"global rate limit: {lim.global_max} actions per {lim.global_window:g} s reached"
        cap = lim.per_action_max if per_action_max is None else per_action_max
        if len(pa) >= cap:
            return f"rate limit of {action!r}: {cap} per {lim.per_action_window:g} s reached"
        recent = {t for _, t in self._targets}
        if target not in recent:
            n = len(recent) + 1
            if n > lim.blast_max_nodes:
                return (f"blast radius: acting on {target!r} would make {n} targets within "
                        f"{lim.blast_window:g} s (max {lim.blast_max_nodes})")
            fleet = self.fleet()
            if fleet <= 0:
                return "blast radius: fleet size unknown (set remediation.limits.fleet_nodes)"
            allowed = math.floor(lim.blast_max_fraction * fleet + 1e-9)
            if n > allowed:
                return (f"blast radius: {n} of {fleet} nodes would exceed {lim.blast_max_fraction:.0%} "
                        f"of the fleet ({allowed} nodes) within {lim.blast_window:g} s")
        cd = lim.cooldown if cooldown is None else cooldown
        last = self._last.get((action, target))
        if last is not None and now - last < cd:
            return f"cooldown: {action!r} ran on {target!r} {now - last:.0f} s ago (cooldown {cd:g} s)"
        self._global.append(now)
        pa.append(now)
        self._targets.append((now, target))
        self._last[(action, target)] = now
        return None


IdemKey = tuple[str, str, str, str]      # (fingerprint, startsAt, status, action)


@dataclass
class Ledger:
    """Idempotency: which (alert fingerprint, startsAt, status, action) were already decided to run, and which
    firing actions ran (so resolved can undo them). Rebuilt from the audit log at start: the log is the
    durable record, so a restart does not re-run what Alertmanager re-sends.

    Refusals are not claimed: a re-sent alert meets the gates again (and is refused again while they hold).
    """

    done: set[IdemKey] = field(default_factory=set)
    # (fingerprint, action) → (target, mode) of a firing action that ran (enforce) or would have (dry-run)
    ran: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    def seen(self, key: IdemKey) -> bool:
        """Whether this key was already decided to run."""
        return key in self.done

    def claim(self, key: IdemKey) -> None:
        """Record that this key runs (before it runs, so a concurrent re-send cannot start it twice)."""
        self.done.add(key)

    @classmethod
    def from_audit(cls, records: Iterable[dict[str, Any]]) -> Ledger:
        """The ledger that the decisions and outcomes in an audit log imply."""
        led = cls()
        for r in records:
            key = r.get("key")
            if not isinstance(key, list) or len(key) != 4:
                continue
            k: IdemKey = (str(key[0]), str(key[1]), str(key[2]), str(key[3]))
            event, result = r.get("event"), r.get("result")
            if event == "decision" and result in ("run", "dry_run"):
                led.done.add(k)
            ran_key = (k[0], k[3])
            if k[2] == "firing" and ((event == "outcome" and result == "ok")
                                     or (event == "decision" and result == "dry_run")):
                led.ran[ran_key] = (str(r.get("target", "")), str(r.get("mode", "")))
            elif k[2] == "resolved" and r.get("undo") and (event == "outcome" or result == "dry_run"):
                led.ran.pop(ran_key, None)
        return led
