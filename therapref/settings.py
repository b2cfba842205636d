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
    config_file: str | None = field(default=None, metadata={"help": "the TOML file these came from"})

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
            data = data.get("therapref", data)
            values.update({k: v for k, v in data.items() if k in names})
            values["config_file"] = str(path)
        for name, spec in names.items():
            raw = environ.get(f"THERAPREF_{name.upper()}")
            if raw is not None and name != "config_file":
                values[name] = _coerce(raw, spec.type)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in names})
        return cls(**values)


def _coerce(raw: str, type_name: Any) -> Any:
    text = str(type_name)
    if text.startswith("int"):
        return int(raw)
    if text.startswith("float"):
        return float(raw)
    return raw
