"""The one typed settings object, built at the edge (flags > env ``THERAPREF_*`` > TOML > defaults)
and passed down. Library code never reads the environment itself."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_FILE = "therapref.toml"


@dataclass
class Settings:
    database_url: str = field(default="therapref.db", metadata={"help": "SQLAlchemy URL or SQLite file path"})
    app_host: str = field(default="127.0.0.1", metadata={"help": "address the labeling app binds to"})
    app_port: int = field(default=8501, metadata={"help": "port of the labeling app"})
    session_timeout_minutes: int = field(default=60, metadata={"help": "idle minutes before logout"})
    reservation_minutes: int = field(default=10, metadata={"help": "how long a shown comparison stays reserved"})
    undo_seconds: int = field(default=60, metadata={"help": "window in which the last judgment can be undone"})
    gold_rate: float = field(default=0.0, metadata={"help": "share of queue items drawn from gold comparisons"})
    candidates_file: str = field(default="candidates.toml", metadata={"help": "candidate-model registry"})
    sqlite_writer_queue: bool = field(default=True, metadata={
        "help": "SQLite writers of all processes queue on <file>-writer.lock; off leaves them to SQLite's busy "
                "handler alone (to compare)"})
    config_file: str | None = field(default=None, metadata={"help": "the TOML file these came from"})
    auth: AuthSettings | None = field(default=None, metadata={
        "help": "single sign-on (OIDC): the [auth] table of therapref.toml; None: password accounts only"})

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
    ) -> Settings:
        """Merge defaults, a TOML file (``[therapref]`` table or top level), ``THERAPREF_*`` env
        vars and explicit overrides (``None`` values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = Path(config_file or environ.get("THERAPREF_CONFIG") or DEFAULT_CONFIG_FILE)
        names = {f.name: f for f in fields(cls)}
        if path.is_file():
            with path.open("rb") as handle:
                data = tomllib.load(handle)
            auth_table = data.get("auth", data.get("therapref", {}).get("auth"))
            data = data.get("therapref", data)
            values.update({k: v for k, v in data.items() if k in names and k != "auth"})
            if auth_table is not None:
                values["auth"] = AuthSettings.from_table(auth_table, source=str(path))
            values["config_file"] = str(path)
        for name, spec in names.items():
            raw = environ.get(f"THERAPREF_{name.upper()}")
            if raw is not None and name not in ("config_file", "auth"):
                values[name] = _coerce(raw, spec.type)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in names})
        return cls(**values)


def _coerce(raw: str, type_name: Any) -> Any:
    """An environment variable's text as the field's type.

    >>> _coerce("off", "bool"), _coerce("yes", "bool"), _coerce("3", "int")
    (False, True, 3)
    """
    text = str(type_name)
    if text.startswith("bool"):
        return raw.strip().lower() not in ("off", "0", "false", "no")
    if text.startswith("int"):
        return int(raw)
    if text.startswith("float"):
        return float(raw)
    return raw


class SettingsError(ValueError):
    """A bad setting: one line naming the file and the key."""


@dataclass(frozen=True)
class AuthSettings:
    """``[auth]`` of ``therapref.toml``: sign-in through an OpenID Connect provider (``st.login``).

    The client secret is never in a file: ``client_secret_env`` names the environment variable that
    holds it. Claim values map to roles through ``roles`` (checked against the login roles of
    ``db.rules`` when a command starts).
    """

    issuer: str = field(metadata={"help": "the provider's issuer URL (its /.well-known/openid-configuration)"})
    client_id: str = field(metadata={"help": "this app's client id at the provider"})
    client_secret_env: str = field(default="THERAPREF_OIDC_CLIENT_SECRET", metadata={
        "help": "environment variable holding the client secret"})
    role_claim: str = field(default="groups", metadata={
        "help": "ID-token claim whose values map to roles (dotted for nested claims: realm_access.roles)"})
    roles: dict[str, str] = field(default_factory=dict, metadata={
        "help": 'claim value -> role, e.g. {"therapists" = "clinician", "it-admins" = "admin"}'})
    username_claim: str = field(default="preferred_username", metadata={
        "help": "claim that names a new account (else email, else sub)"})
    local_accounts: bool = field(default=True, metadata={
        "help": "keep the username + password form; false: single sign-on only"})
    redirect_uri: str = field(default="", metadata={
        "help": "the app's /oauth2callback as the provider knows it (default: http://HOST:PORT/oauth2callback)"})
    cookie_secret_env: str = field(default="", metadata={
        "help": "environment variable with the identity-cookie key (default: a new key at each start)"})

    @classmethod
    def from_table(cls, table: Any, *, source: str = DEFAULT_CONFIG_FILE) -> AuthSettings:
        """Check ``[auth]`` and build the settings; ``SettingsError`` (file, key, problem) otherwise.

        >>> AuthSettings.from_table({"issuer": "https://idp.example/", "client_id": "tp"}).issuer
        'https://idp.example'
        >>> AuthSettings.from_table({"client_id": "tp"}, source="t.toml")
        Traceback (most recent call last):
        ...
        therapref.settings.SettingsError: t.toml: [auth] issuer is missing
        >>> AuthSettings.from_table({"issuer": "idp", "client_id": "tp"}, source="t.toml")
        Traceback (most recent call last):
        ...
        therapref.settings.SettingsError: t.toml: [auth] issuer must be an http(s) URL, not 'idp'
        """
        def bad(key: str, problem: str) -> SettingsError:
            return SettingsError(f"{source}: [auth] {key} {problem}")

        if not isinstance(table, Mapping):
            raise SettingsError(f"{source}: [auth] must be a table")
        known = {f.name: f for f in fields(cls)}
        for key in table:
            if key not in known:
                raise bad(key, f"is not a setting (known: {', '.join(known)})")
        for key in ("issuer", "client_id"):
            if not str(table.get(key) or "").strip():
                raise bad(key, "is missing")
        values: dict[str, Any] = {}
        for key, value in table.items():
            wanted = bool if key == "local_accounts" else dict if key == "roles" else str
            if not isinstance(value, wanted):
                raise bad(key, f"must be a {'boolean' if wanted is bool else 'table' if wanted is dict else 'string'}")
            values[key] = value.strip() if isinstance(value, str) else value
        values["issuer"] = values["issuer"].rstrip("/")
        if not values["issuer"].startswith(("https://", "http://")):
            raise bad("issuer", f"must be an http(s) URL, not {table['issuer']!r}")
        for claim_value, role in values.get("roles", {}).items():
            if not isinstance(role, str) or not role.strip():
                raise bad(f"roles.{claim_value}", "must name a role")
        for key in ("client_secret_env", "role_claim", "username_claim"):
            if key in values and not values[key]:
                raise bad(key, "must not be empty")
        return cls(**values)

    @property
    def metadata_url(self) -> str:
        """
        >>> AuthSettings("https://idp.example/realms/c", "tp").metadata_url
        'https://idp.example/realms/c/.well-known/openid-configuration'
        """
        return f"{self.issuer}/.well-known/openid-configuration"

    def client_secret(self, environ: Mapping[str, str]) -> str:
        """The client secret from the environment the edge hands in; ``SettingsError`` when unset."""
        secret = environ.get(self.client_secret_env, "")
        if not secret:
            raise SettingsError(f"[auth] client_secret_env: the environment variable {self.client_secret_env} "
                                "holding the client secret is not set")
        return secret
