"""Stage configuration: frozen dataclasses whose field docs become ``--help``.

Every stage (``sample``, ``train``, ``merge``, ``eval``, ``sft``, ``run``) has one frozen dataclass, defined in the
stage's module. A field is declared with :func:`option`, which records its help text (and, optionally, choices).
Values are resolved with the precedence **defaults < YAML file < command line**:

    cfg = resolve(SampleConfig, yaml_path="configs/embedded.yaml", cli={"beta": 0.5})

Unknown keys are rejected and *every* problem is reported at once in one :class:`ConfigError`, each naming the
flag (``--max-new-tokens``) and the value it got. ``None`` means "off" for optional settings; on the command line
it is spelled ``none``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more configuration problems; the message lists all of them."""

    def __init__(self, problems: Iterable[str], source: str | None = None):
        self.problems = list(problems)
        head = f"invalid configuration{f' ({source})' if source else ''}:"
        super().__init__("\n".join([head] + [f"  - {p}" for p in self.problems]))


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Iterable[Any] | None = None,
           factory: Callable[[], Any] | None = None, cli: bool = True, positional: bool = False):
    """A config field with its ``--help`` text. ``cli=False`` keeps it out of the command line (YAML only);
    ``positional=True`` also lets it be given as the command's (one) positional argument."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "cli": cli,
            "positional": positional}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``tp``; raise ValueError with a readable message."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "off")):
        if optional:
            return None
        raise ValueError(f"{where} may not be none")
    origin = typing.get_origin(base)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{where} expects true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ValueError(f"{where} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"{where} expects an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool):
            raise ValueError(f"{where} expects a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} expects a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{where} must be a finite number, got {value!r}" + (" (none turns it off)"
                                                                                    if optional else ""))
        return number
    if base is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{where} expects a string, got {value!r}")
        return str(value)
    if origin in (tuple, list):
        inner = typing.get_args(base)[0] if typing.get_args(base) else str
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i.strip() if isinstance(i, str) else i for i in items]
        return tuple(_coerce(i, inner, where) for i in items if i != "")
    return value


def _check_choices(cls: type, cfg_values: Mapping[str, Any], problems: list[str]) -> None:
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if not choices or f.name not in cfg_values:
            continue
        v = cfg_values[f.name]
        vals = v if isinstance(v, tuple) else (v,)
        for item in vals:
            if item is not None and item not in choices:
                problems.append(f"{flag_name(f.name)}: {item!r} is not one of {', '.join(map(str, choices))}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"--config: no such file {str(path)!r}"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: not valid YAML ({getattr(e, 'problem', e)})"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of option: value at the top level"])
    return data


def resolve(cls: type[T], *, yaml_values: Mapping[str, Any] | None = None, cli: Mapping[str, Any] | None = None,
            source: str | None = None) -> T:
    """Build ``cls`` from defaults < ``yaml_values`` < ``cli``; report every problem at once.

    ``yaml_values`` keys may use ``-`` or ``_``. Keys that are not fields of ``cls`` are errors. After coercion
    the dataclass's own ``validate()`` (if any) may add problems; they are reported together.
    """
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    problems: list[str] = []
    values: dict[str, Any] = {}
    for origin_name, mapping in (("config file", yaml_values or {}), ("command line", cli or {})):
        for key, raw in mapping.items():
            name = str(key).replace("-", "_")
            if name not in names:
                close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.7)
                hint = f" (did you mean {', '.join(flag_name(c) for c in close)}?)" if close else ""
                problems.append(f"{flag_name(name)}: unknown option in the {origin_name}{hint}")
                continue
            try:
                values[name] = _coerce(raw, types_[name], flag_name(name))
            except ValueError as e:
                problems.append(str(e))
    _check_choices(cls, values, problems)
    bad = {p.split(":")[0].split(" ")[0] for p in problems}
    missing = [f for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    problems += [f"{flag_name(f.name)} is required" for f in missing]
    cfg = None
    if not missing:
        cfg = cls(**values)
        # Validate what did parse too, so every problem is reported in one go; skip flags already reported.
        problems += [p for p in getattr(cfg, "validate", lambda: [])() if p.split(" ")[0] not in bad]
    if problems:
        raise ConfigError(problems, source)
    return cfg  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per CLI field of ``cls``; values are kept as given (strings) for :func:`resolve`."""
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        base, optional = _unwrap_optional(types_[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_ = f.metadata.get("help", "")
        help_ += " (required)" if required else f" (default: {'none' if shown is None else shown})"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_.replace("%", "%%"))
        if base is bool and not optional:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            choices = f.metadata.get("choices")
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices else base.__name__.upper() if isinstance(
                base, type) else "VALUE"
            parser.add_argument(flag_name(f.name), metavar=metavar, **kw)
            if f.metadata.get("positional"):
                parser.add_argument(f.name, nargs="?", metavar=f.name.upper(), default=argparse.SUPPRESS,
                                    help=f"same as {flag_name(f.name)}")


def config_from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Resolve ``cls`` from a parsed namespace that may carry ``config`` (a YAML path) and stage flags."""
    cli = {k: v for k, v in vars(ns).items() if k not in ("config", "command", "func", "log_level", "debug")}
    yaml_values: dict[str, Any] = {}
    source = None
    if getattr(ns, "config", None):
        yaml_values = load_yaml(ns.config)
        source = str(ns.config)
    return resolve(cls, yaml_values=yaml_values, cli=cli, source=source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists, paths strings)."""
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(i) for i in v]
        if isinstance(v, Path):
            return str(v)
        return v
    return {f.name: conv(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save_config(cfg: Any, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write the resolved config (plus ``extra``, e.g. versions) as JSON, atomically."""
    path = Path(path)
    payload = {"config": to_dict(cfg), **(extra or {})}
    from .utils import write_json

    write_json(path, payload)
