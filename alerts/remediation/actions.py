"""Running one action: a command (argument list, never a shell; allowlisted; timed out) or a signed webhook."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from alerts.remediation.auth import SIGNATURE_HEADER, sign
from alerts.remediation.policy import PLACEHOLDER, in_allowlist

Result = Literal["ok", "failed", "timeout", "refused"]
OUTPUT_KEEP = 2000        # characters of stdout/stderr kept for the audit log


class TemplateError(ValueError):
    """An argv template cannot be filled from the alert's labels (missing label, option injection)."""


@dataclass(frozen=True)
class Outcome:
    """What one attempt did. `transient` failures are retried with backoff."""

    result: Result
    detail: str
    transient: bool = False
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        """Whether the attempt succeeded."""
        return self.result == "ok"


def render_argv(template: list[str], labels: dict[str, str]) -> list[str]:
    """Fill `{label}` placeholders with label values, each within its own argument, literally.

    A value never becomes code: there is no shell, and format specs or attribute lookups are not
    interpreted (only `{name}`). A filled argument that starts with '-' where its template did not is
    refused, so a label value cannot smuggle an option (`--all`) into the command.
    """
    out = [template[0]]
    for arg in template[1:]:
        missing = [n for n in PLACEHOLDER.findall(arg) if n not in labels]
        if missing:
            raise TemplateError(f"argument {arg!r} needs label {missing[0]!r}, which the alert does not have")
        filled = PLACEHOLDER.sub(lambda m: labels[m.group(1)], arg)
        if filled.startswith("-") and not arg.startswith("-"):
            raise TemplateError(f"argument {arg!r} would become the option {filled[:40]!r}; refused")
        if "\x00" in filled:
            raise TemplateError(f"argument {arg!r}: a label value contains a NUL byte")
        out.append(filled)
    return out


def command_env(labels: dict[str, str], alert: dict[str, str], static: dict[str, str],
                pass_env: list[str]) -> dict[str, str]:
    """The command's environment: a few inherited variables, the alert, its labels as FLEETWATCH_LABEL_<NAME>."""
    env = {k: os.environ[k] for k in pass_env if k in os.environ}
    env.update(static)
    for k, v in alert.items():
        env[f"FLEETWATCH_ALERT_{k.upper()}"] = v
    for k, v in labels.items():
        if "\x00" not in v:
            env[f"FLEETWATCH_LABEL_{k.upper()}"] = v
    return env


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The command runs in its own session: kill its whole process group, children included.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_command(argv: list[str], env: dict[str, str], timeout_s: float, allowlist: frozenset[str],
                      transient_exit_codes: tuple[int, ...] = (75,)) -> Outcome:
    """Run argv (no shell) with a timeout; the executable must be allowlisted (re-checked right before exec)."""
    if not in_allowlist(argv[0], allowlist):
        return Outcome("refused", f"executable {argv[0]!r} is not in the allowlist")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, close_fds=True)
    except OSError as err:
        return Outcome("failed", f"cannot start {argv[0]}: {err.strerror or err}", transient=False)
    try:
        out, err_out = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        _kill_group(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5.0)
        return Outcome("timeout", f"killed after {timeout_s:g} s", transient=True, returncode=proc.returncode)
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    stdout = out.decode(errors="replace")[-OUTPUT_KEEP:]
    stderr = err_out.decode(errors="replace")[-OUTPUT_KEEP:]
    rc = proc.returncode
    if rc == 0:
        return Outcome("ok", "exit 0", returncode=0, stdout=stdout, stderr=stderr)
    return Outcome("failed", f"exit {rc}", transient=rc in transient_exit_codes, returncode=rc, stdout=stdout,
                   stderr=stderr)


async def post_webhook(session: aiohttp.ClientSession, url: str, document: dict[str, Any], secret: bytes | None,
                       timeout_s: float) -> Outcome:
    """POST the document as JSON, signed with HMAC-SHA256 over the body when a secret is given.

    Connection errors, timeouts, 429 and 5xx are transient (retried); other 4xx are not.
    """
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "X-Fleetwatch-Timestamp": f"{time.time():.3f}"}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            text = (await resp.text(errors="replace"))[:OUTPUT_KEEP]
            if 200 <= resp.status < 300:
                return Outcome("ok", f"HTTP {resp.status}", returncode=resp.status, stdout=text)
            transient = resp.status == 429 or resp.status >= 500
            return Outcome("failed", f"HTTP {resp.status}", transient=transient, returncode=resp.status, stdout=text)
    except TimeoutError:
        return Outcome("timeout", f"no answer within {timeout_s:g} s", transient=True)
    except aiohttp.ClientError as err:
        return Outcome("failed", f"{type(err).__name__}: {err}", transient=True)
