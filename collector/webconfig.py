"""The exporter-toolkit web configuration file (--web-config-file): TLS and basic auth, as Prometheus exporters."""

from __future__ import annotations

import base64
import hmac
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


class WebConfigError(ValueError):
    """The web config file is invalid; the message names the file and key."""


@dataclass
class WebConfig:
    """TLS and basic-auth settings in the format of prometheus/exporter-toolkit's web-config.yml."""

    cert_file: str | None = None
    key_file: str | None = None
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str | None = None
    basic_auth_users: dict[str, str] = field(default_factory=dict)   # user → bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    _verified: dict[tuple[str, str], bool] = field(default_factory=dict, repr=False)

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSLContext when TLS is configured."""
        if not self.cert_file:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.min_version == "TLS13":
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
        return ctx

    def check_basic_auth(self, header: str | None) -> bool:
        """True when no users are configured or the Authorization header names a user with the right password."""
        if not self.basic_auth_users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.basic_auth_users.get(user)
        # Compare against a dummy hash for unknown users so timing does not reveal which users exist.
        target = hashed or "$2b$10$" + "x" * 53
        key = (user, password)
        cached = self._verified.get(key)
        if cached is not None and hashed:
            return cached
        try:
            ok = bcrypt.checkpw(password.encode(), target.encode())
        except ValueError:
            ok = False
        ok = ok and hashed is not None and hmac.compare_digest(target, hashed)
        if hashed and len(self._verified) < 1024:    # bcrypt is slow by design: cache per credential
            self._verified[key] = ok
        return ok


def load_web_config(path: str | Path) -> WebConfig:
    """Parse and validate a web-config file; errors name the file and the bad key."""
    p = Path(path)
    try:
        raw: Any = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise WebConfigError(f"{p}: cannot read web config: {err}") from err
    if not isinstance(raw, dict):
        raise WebConfigError(f"{p}: top level must be a mapping")
    unknown = set(raw) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"{p}: unknown key(s) {sorted(unknown)}")
    wc = WebConfig()
    tls = raw.get("tls_server_config") or {}
    if tls:
        for key in ("cert_file", "key_file"):
            if not tls.get(key):
                raise WebConfigError(f"{p}: tls_server_config.{key} is required when TLS is configured")
            if not Path(tls[key]).is_file():
                raise WebConfigError(f"{p}: tls_server_config.{key}: no such file {tls[key]!r}")
        wc.cert_file, wc.key_file = tls["cert_file"], tls["key_file"]
        cat = tls.get("client_auth_type", "NoClientCert")
        if cat not in _CLIENT_AUTH:
            raise WebConfigError(f"{p}: tls_server_config.client_auth_type: invalid value {cat!r}")
        wc.client_auth_type = cat
        wc.client_ca_file = tls.get("client_ca_file")
        wc.min_version = tls.get("min_version")
    users = raw.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{p}: basic_auth_users must map user names to bcrypt hashes")
    for user, h in users.items():
        if not isinstance(h, str) or not h.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{p}: basic_auth_users.{user}: not a bcrypt hash")
    wc.basic_auth_users = {str(u): h for u, h in users.items()}
    wc.headers = dict((raw.get("http_server_config") or {}).get("headers") or {})
    return wc
