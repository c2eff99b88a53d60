"""A nats-server in operator (JWT) mode for the creds-file tests: an operator, a system account, an
account with JetStream, and users of it, each signed here with nkeys (what `nsc` would make)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import nkeys

_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
              "leaf": -1}  # fmt: skip
_JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _keys(prefix: int) -> tuple[str, str, Any]:
    seed = nkeys.encode_seed(secrets.token_bytes(32), prefix)
    pair = nkeys.from_seed(seed)
    return seed.decode(), pair.public_key.decode(), pair


def _jwt(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
                              "sub": subject, "nats": {**nats, "version": 2}, "jti": ""}  # fmt: skip
    claims["jti"] = base64.b32encode(hashlib.sha512(json.dumps(claims).encode()).digest()[:32]).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


class Operator:
    """Writes ``server.conf`` (operator, preloaded accounts, JetStream under ``root``) and creds files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        _seed, operator_public, self._operator = _keys(nkeys.PREFIX_BYTE_OPERATOR)
        _seed, system_public, _pair = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
        _seed, self.account, self._account_pair = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
        operator = _jwt(self._operator, operator_public, "l8-tests", {"type": "operator"})
        system = _jwt(self._operator, system_public, "SYS", {"type": "account", "limits": _UNLIMITED})
        account = _jwt(self._operator, self.account, "apps",
                       {"type": "account", "limits": {**_UNLIMITED, **_JETSTREAM}})  # fmt: skip
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "server.conf"
        self.conf.write_text(
            f'operator: "{operator}"\nresolver: MEMORY\nsystem_account: {system_public}\n'
            f'resolver_preload: {{ {self.account}: "{account}", {system_public}: "{system}" }}\n'
            f'jetstream {{ store_dir: "{root / "js"}" }}\n'
        )

    def creds(self, name: str, *, signer: Any = None) -> tuple[Path, str]:
        """A user of the account (signed by ``signer`` instead, to make one the server refuses):
        its creds file and its seed."""
        seed, public, _pair = _keys(nkeys.PREFIX_BYTE_USER)
        user = _jwt(signer or self._account_pair, public, name,
                    {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})  # fmt: skip
        path = self.root / f"{name}.creds"
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{user}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path, seed

    def stranger(self) -> Any:
        """An account key the server does not know."""
        return _keys(nkeys.PREFIX_BYTE_ACCOUNT)[2]
