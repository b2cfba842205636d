"""One way from a TRL-style config dataclass to its TOML file and its command-line flags (as TRL's
``TrlParser`` does for its scripts): every setting is written once, as a dataclass field with ``help``
(and optionally ``metavar``) metadata, and both the TOML loader and the typer options come from it.

- :func:`load_config`: a TOML file (one table, or the top level) and overrides (flags; ``None`` = not
  given) into the dataclass; an unknown key fails fast with the file, the line and the key.
- :class:`ConfigFlags`: which fields a command offers as flags (under which names); its typer options
  are built from the fields' types and help. They are attached when the command runs or shows its help
  (:func:`config_command`), so a command whose config imports TRL costs nothing to the others.

This module is the core: it imports only the standard library at import time (typer, click and rich
only inside the functions that build options), so that every area may read :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
#: Where a command keeps the values of its config flags between parsing and its function (``ctx.meta``).
META_KEY = "therapref.config_flags"


# --- TOML -------------------------------------------------------------------------------------------------

def read_toml(path: str | Path, *, table: str, names: Sequence[str], error: type[Exception],
              what: str = "") -> dict[str, Any]:
    """The settings in a TOML file (its ``[table]``, or the top level when there is none), every key
    one of ``names``; anything else is one ``error`` line naming the file (and line) and the key.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
    ...     _ = f.write('[train]\\nseed = 1\\nlerning_rate = 0.1\\n')
    >>> read_toml(f.name, table="train", names=["seed"], error=ValueError)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...toml:3: unknown setting: lerning_rate (not a [train] setting)
    >>> os.unlink(f.name)
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: invalid TOML ({exc})") from None
    data = data.get(table, data)
    if not isinstance(data, dict):
        raise error(f"{path}: [{table}] must be a table of settings")
    unknown = [key for key in data if key not in set(names)]
    if unknown:
        key = unknown[0]
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise error(f"{path}{_line_of(text, key)}: unknown setting{what}: {key}{more} (not a [{table}] setting)")
    return data


def _line_of(text: str, key: str) -> str:
    """``:N`` for the line that sets ``key`` (bare or quoted), or '' when it cannot be found.

    >>> _line_of("a = 1\\n  'b' = 2\\n", "b"), _line_of("a = 1", "c")
    (':2', '')
    """
    pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return f":{number}"
    return ""


def init_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields a TOML file or a flag may set (``init`` fields), by name."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def load_config(cls: Callable[..., T], path: str | Path | None = None, *, table: str,
                overrides: Mapping[str, Any] | None = None, error: type[Exception],
                what: str = "", names: Sequence[str] | None = None) -> T:
    """``cls`` built from a TOML file (``[table]`` or the top level) and ``overrides`` (flags win; a
    ``None`` override is a flag not given, so the file's value stays). Unknown keys, in the file or in
    the overrides, and values the dataclass rejects are one ``error`` line each; ``what`` ends the
    messages (e.g. ``" for dpo"``); ``names`` defaults to the dataclass's init fields."""
    known = list(names if names is not None else init_fields(cls))  # type: ignore[arg-type]
    values: dict[str, Any] = {} if path is None else read_toml(path, table=table, names=known, error=error,
                                                               what=what)
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise error(f"unknown setting(s){what}: {', '.join(unknown)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, error):
            raise
        raise error(f"invalid settings{what}: {str(exc).splitlines()[0]}") from None


# --- flags ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Flag:
    """One field offered as a flag: ``--name`` (default: the field's name with dashes) and its help
    (default: the field's ``help`` metadata)."""

    field: str
    name: str | None = None
    help: str | None = None

    @property
    def param(self) -> str:
        return (self.name or self.field).replace("-", "_")


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
    """The flags a command takes for some fields of a config dataclass.

    ``source`` names the dataclass as ``"module:attribute"`` (a class, or a mapping or sequence of
    classes: a field is read from the first that has it); it is imported only when the options are
    built. ``flags`` are field names or :class:`Flag` s. ``show_defaults`` shows the dataclass's default
    in the help (for configs whose defaults do not depend on other flags); ``panel`` titles their group
    in ``--help``.
    """

    source: str
    flags: tuple[str | Flag, ...]
    panel: str | None = None
    show_defaults: bool = False

    @property
    def entries(self) -> tuple[Flag, ...]:
        return tuple(f if isinstance(f, Flag) else Flag(f) for f in self.flags)

    def without(self, *fields: str) -> ConfigFlags:
        """The same flags but those of ``fields`` (a command that sets them itself)."""
        return dataclasses.replace(self, flags=tuple(f for f in self.entries if f.field not in fields))

    def classes(self) -> list[type]:
        module, _, attribute = self.source.partition(":")
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, Mapping):
            return list(target.values())
        return list(target) if isinstance(target, Sequence) else [target]

    def values(self, ctx: Any) -> dict[str, Any]:
        """The flags' values by *field* name (``None``: not given) once the command has parsed them."""
        given = ctx.meta.get(META_KEY, {})
        return {entry.field: given.get(entry.param) for entry in self.entries}

    def build(self, ctx: Any, cls: Callable[..., T], **fixed: Any) -> T:
        """``cls`` from the flags given (the dataclass's defaults for the others) and ``fixed`` values."""
        return cls(**{**{k: v for k, v in self.values(ctx).items() if v is not None}, **fixed})

    def parameters(self) -> list[inspect.Parameter]:
        """The flags as typer parameters (``Annotated[Optional[T], typer.Option(...)] = None``)."""
        import typer

        classes = self.classes()
        params = []
        for entry in self.entries:
            owner = next((c for c in classes if entry.field in init_fields(c)), None)
            if owner is None:
                raise KeyError(f"{self.source} has no field {entry.field!r}")
            field = init_fields(owner)[entry.field]
            kind = option_type(_hints(owner)[entry.field])
            flag = "--" + (entry.name or entry.field).replace("_", "-")
            decl = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
            # With show_defaults the dataclass's default is the option's (shown in --help); otherwise None,
            # "not given", so that a TOML file's value or the config's own default stays.
            default = field.default if self.show_defaults and field.default not in (dataclasses.MISSING, ()) else None
            option = typer.Option(decl, help=_escape(entry.help or str(field.metadata.get("help", ""))),
                                  metavar=field.metadata.get("metavar"), show_default=default is not None,
                                  rich_help_panel=self.panel)
            annotation = kind if default is not None else typing.Optional[kind]  # noqa: UP045
            params.append(inspect.Parameter(entry.param, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=typing.Annotated[annotation, option]))
        return params

    def click_params(self) -> list[Any]:
        """The flags as the click parameters typer makes of :meth:`parameters` (through a throwaway
        one-command app, typer's public way from a signature to parameters)."""
        import typer
        from typer.main import get_command

        params = self.parameters()

        def command(**_: Any) -> None:  # its signature is set below
            """Flags."""

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        scratch = typer.Typer(add_completion=False)
        scratch.command()(command)
        return [p for p in get_command(scratch).params if p.name in command.__annotations__]


def option_type(annotation: Any) -> type:
    """The command-line type of a field's annotation: bool, int, float, str, or ``list[str]`` for a
    tuple or list of strings; anything else (dates, paths, unions of several) is read as a string that
    the dataclass parses.

    >>> from datetime import datetime
    >>> option_type(int | None), option_type(bool), option_type(tuple[str, ...]), option_type(datetime | None)
    (<class 'int'>, <class 'bool'>, list[str], <class 'str'>)
    """
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) in (tuple, list):
        return list[str]
    return annotation if annotation in (bool, int, float, str) else str


@cache
def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field annotations (strings under ``from __future__ import annotations``)."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        try:
            hints.update(typing.get_type_hints(klass))
        except Exception:  # noqa: BLE001 - an annotation this module cannot resolve reads as a string
            hints.update({name: str for name in getattr(klass, "__annotations__", {})})
    return hints


def _escape(text: str) -> str:
    """Help text as typer's rich help shows it literally (``[train]`` is not markup)."""
    try:
        from rich.markup import escape
    except ImportError:  # pragma: no cover - typer without rich prints plain text
        return text
    return escape(text)


def config_command(*groups: ConfigFlags) -> type:
    """A typer command class whose options include ``groups``' flags, attached when the command parses
    its arguments or shows its help (not when the CLI starts). Its function reads them with
    ``group.values(ctx)`` / ``group.build(ctx, cls)``; ``ctx.params`` still holds every option (for the
    command line a manifest records)."""
    from typer.core import TyperCommand

    class ConfigCommand(TyperCommand):
        _attached = False

        def _attach(self) -> None:
            if not self._attached:
                own = {p.name for p in self.params}
                extra = [p for group in groups for p in group.click_params() if p.name not in own]
                help_option = [p for p in self.params if p.name == "help"]
                self.params = [p for p in self.params if p.name != "help"] + extra + help_option
                self._config_names = {p.name for p in extra}
                self._attached = True

        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            self._attach()
            return super().parse_args(ctx, args)

        def get_params(self, ctx: Any) -> list[Any]:
            self._attach()
            return super().get_params(ctx)

        def invoke(self, ctx: Any) -> Any:
            ctx.meta[META_KEY] = {name: ctx.params[name] for name in self._config_names}
            own = {k: v for k, v in ctx.params.items() if k not in self._config_names}
            return ctx.invoke(self.callback, **own) if self.callback is not None else None

    return ConfigCommand
