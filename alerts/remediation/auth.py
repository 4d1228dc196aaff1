"""Who may call the webhook: a bearer token and/or an HMAC-SHA256 signature of the body, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fleetwatch.remediation")

SIGNATURE_HEADER = "X-Fleetwatch-Signature"     # "sha256=<hex of HMAC-SHA256(secret, body)>"
TOKEN_FILE_NAME = "webhook-token"               # under <data_dir>/remediation/ when no token file is configured


class AuthConfigError(ValueError):
    """A token or secret file is missing, empty or unsafe; the message names the file."""


def read_secret_file(path: str | Path, what: str) -> bytes:
    """A secret from a file (surrounding whitespace stripped); AuthConfigError when unreadable or empty."""
    p = Path(path)
    try:
        data = p.read_bytes().strip()
    except OSError as err:
        raise AuthConfigError(f"{what} {p}: cannot read: {err.strerror}") from None
    if not data:
        raise AuthConfigError(f"{what} {p}: the file is empty")
    return data


def ensure_token_file(path: Path) -> tuple[bytes, bool]:
    """The token stored at `path`, generating it (mode 0600, created exclusively) on first start.

    Returns (token, created). An existing file that others can read, or group members write, is refused: it
    is a credential. Group read is allowed: Kubernetes gives mounted Secrets the pod's fsGroup that way.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o027:
            raise AuthConfigError(f"webhook token file {path}: mode {mode:04o} lets others read or change it; "
                                  f"chmod 600 it") from None
        return read_secret_file(path, "webhook token file"), False
    token = secrets.token_urlsafe(32).encode()
    try:
        os.write(fd, token + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return token, True


def _bytes(header_value: str) -> bytes:
    # Header values can hold any character; compare_digest needs bytes for non-ASCII input.
    return header_value.strip().encode("utf-8", "replace")


@dataclass(frozen=True)
class Authenticator:
    """Checks one request. With auth disabled everything passes; otherwise at least one configured
    credential must be present and valid, and a signature that is present must be valid."""

    token: bytes | None = None
    hmac_secret: bytes | None = None
    disabled: bool = False

    def __post_init__(self) -> None:
        if not self.disabled and not self.token and not self.hmac_secret:
            raise AuthConfigError("webhook auth: no token or HMAC secret configured and auth not disabled")

    def check(self, authorization: str | None, signature: str | None, body: bytes) -> str | None:
        """None when the request is authenticated, else why not (said to the caller and the audit log)."""
        if self.disabled:
            return None
        ok = False
        if signature is not None:
            if self.hmac_secret is None:
                return f"{SIGNATURE_HEADER} given but no HMAC secret is configured"
            scheme, _, given = signature.partition("=")
            want = hmac.new(self.hmac_secret, body, hashlib.sha256).hexdigest()
            if scheme.strip().lower() != "sha256" or not hmac.compare_digest(_bytes(given), want.encode()):
                return "wrong HMAC signature"
            ok = True
        if authorization is not None and self.token is not None:
            scheme, _, given = authorization.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(_bytes(given), self.token):
                return "wrong bearer token"
            ok = True
        if ok:
            return None
        if authorization is not None:
            return "bearer token given but no token is configured"
        want = " or ".join(w for w, on in (("a bearer token", self.token), (f"a {SIGNATURE_HEADER} header",
                                                                             self.hmac_secret)) if on)
        return f"missing credentials: send {want}"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for `body` (used by senders and by the outgoing webhook action)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
