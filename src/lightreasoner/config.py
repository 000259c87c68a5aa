"""Stage configuration: frozen dataclasses whose field docs become ``--help``.

Every stage (``sample``, ``train``, ``merge``, ``eval``, ``grade``, ``sft``, ``report``) has one frozen dataclass,
defined in the stage's module; ``run``'s (in :mod:`.pipeline`) nests one section per stage. A field is declared
with :func:`option`, which records its help text (and, optionally, choices). Values are resolved with the
precedence **defaults < YAML file < command line**:

    cfg = resolve(SampleConfig, yaml_values=load_yaml("my.yaml"), cli={"beta": "0.5"})

A nested section is reached as ``--SECTION.FLAG`` on the command line (``--sample.beta 0.6``) and as a mapping in
YAML (``sample: {beta: 0.6}``), where FLAG is exactly the stage command's own flag. Unknown keys are rejected and
*every* problem is reported at once in one :class:`ConfigError`, each naming the flag as the user spells it
(``--sample.max-new-tokens``) and the value it got. ``None`` means "off" for optional settings; on the command line
it is spelled ``none``. Non-finite numbers are refused everywhere.

Field metadata (see :func:`option`): ``required`` (the stage command needs it; under ``run`` the run fills it),
``run_sets`` (under ``run`` the run sets it from its own options, so a section may not), ``result`` (whether the
value can change the stage's output: only those enter a stage's fingerprint), ``saved`` (kept in a saved config).

A config built in Python (``TrainConfig(lr=-1)``) is checked on construction as the command line is: the stage
configs derive from :class:`Checked`, whose ``__post_init__`` coerces the values and raises one
:class:`ConfigError` with every problem, worded as the command line words it. A field whose default is none (a
required one such as ``output``, or one ``run`` fills) may still be none then: the stage function requires it
(``check(cfg, complete=True)``, :mod:`.api`). The resolver and ``run`` build configs inside :func:`unchecked` and
check the whole at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import difflib
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import yaml

from .utils import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """One or more configuration problems; the message lists all of them."""

    def __init__(self, problems: Iterable[str], source: str | None = None):
        self.problems = list(problems)
        head = f"invalid configuration{f' ({source})' if source else ''}:"
        super().__init__("\n".join([head] + [f"  - {p}" for p in self.problems]))


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Iterable[Any] | None = None,
           factory: Callable[[], Any] | None = None, cli: bool = True, positional: bool = False,
           required: bool = False, run_sets: bool = False, result: bool = True, saved: bool = True):
    """A config field with its ``--help`` text.

    ``cli=False`` keeps it out of the command line (YAML only); ``positional=True`` also lets it be given as the
    command's (one) positional argument; ``required=True`` (implied when there is no default) makes it a
    required flag of the stage command (its default is ``None``: under ``run`` the run fills it); ``run_sets=True`` marks a value that ``run`` sets from its
    own options; ``result=False`` marks a setting that cannot change the output (progress bars, logging, resume
    behaviour), left out of fingerprints; ``saved=False`` a one-off action left out of saved configs.
    """
    required = required or (default is dataclasses.MISSING and factory is None)
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "cli": cli,
            "positional": positional, "required": required, "run_sets": run_sets or required, "result": result,
            "saved": saved}
    if required:
        default = None
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("flag_prefix", default="")


def flag(name: str) -> str:
    """The command-line flag of field ``name`` as the user spells it here (``--sample.beta`` inside ``run``)."""
    return "--" + _PREFIX.get() + name.replace("_", "-")


flag_name = flag


@contextlib.contextmanager
def flag_prefix(prefix: str) -> Iterator[None]:
    """Name flags with ``prefix`` (e.g. ``"sample."``) inside the block: validation and errors of a nested section
    then name the flags ``run`` takes."""
    token = _PREFIX.set(prefix)
    try:
        yield
    finally:
        _PREFIX.reset(token)


def is_config(tp: Any) -> bool:
    """Whether a field type is a nested config section (a dataclass)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


@functools.cache
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


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def config_path(name: str | Path) -> Path:
    """A YAML path as given, or the name of a config shipped with the package (``embedded``)."""
    path = Path(name)
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    return packaged if not path.exists() and packaged.is_file() else path


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = config_path(path)
    if not path.is_file():
        raise ConfigError([f"--config: no such file {str(path)!r}"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start}); is it the right file?"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: not valid YAML ({getattr(e, 'problem', e)})"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of option: value at the top level"])
    return data


def _split_sections(cls: type, mapping: Mapping[str, Any], origin: str, problems: list[str]
                    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(own keys, {section: its keys}) of one source; ``sec.key`` and ``sec: {key: ...}`` both name a section key."""
    sections = {f.name for f in dataclasses.fields(cls) if is_config(_field_types(cls)[f.name])}
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for key, raw in mapping.items():
        head, dot, rest = str(key).replace("-", "_").partition(".")
        if head in sections:
            if dot:
                nested[head][rest] = raw
            elif isinstance(raw, Mapping):
                nested[head].update(raw)
            elif raw is not None:
                problems.append(f"{flag(head)}: expected a section of options ({head}: {{...}}) in the {origin}")
        else:
            own[str(key)] = raw
    return own, nested


def _collect(cls: type, yaml_values: Mapping[str, Any], cli: Mapping[str, Any], nested: bool,
             problems: list[str]) -> dict[str, Any]:
    """Coerced field values of ``cls`` from both sources (sections resolved recursively); problems appended."""
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    sections: dict[str, list[dict[str, Any]]] = {}
    for origin, mapping in (("config file", yaml_values or {}), ("command line", cli or {})):
        own, nested_maps = _split_sections(cls, mapping, origin, problems)
        for sec, sub in nested_maps.items():
            sections.setdefault(sec, [{}, {}])[0 if origin == "config file" else 1].update(sub)
        for key, raw in own.items():
            name = str(key).replace("-", "_")
            f = fields.get(name)
            if f is None or (nested and f.metadata.get("run_sets")):
                if f is not None:
                    problems.append(f"{flag(name)} is set by `run` from its own options (--output, --expert, "
                                    f"--amateur, --expert-revision, --amateur-revision, --data, --dtype, --device, "
                                    f"--seed); set it there")
                    continue
                close = difflib.get_close_matches(name, sorted(fields), n=3, cutoff=0.7)
                hint = f" (did you mean {', '.join(flag(c) for c in close)}?)" if close else ""
                problems.append(f"{flag(name)}: unknown option in the {origin}{hint}")
                continue
            try:
                values[name] = _coerce(raw, types_[name], flag(name))
            except ValueError as e:
                problems.append(str(e))
    for sec, (from_yaml, from_cli) in sections.items():
        with flag_prefix(_PREFIX.get() + sec + "."):
            sub = _collect(types_[sec], from_yaml, from_cli, True, problems)
            values[sec] = types_[sec](**sub)
    _check_choices(cls, values, problems)
    return values


def resolve(cls: type[T], *, yaml_values: Mapping[str, Any] | None = None, cli: Mapping[str, Any] | None = None,
            source: str | None = None) -> T:
    """Build ``cls`` from defaults < ``yaml_values`` < ``cli``; report every problem at once.

    Keys may use ``-`` or ``_``; nested sections take ``section.key`` or a ``section:`` mapping. Keys that are not
    fields are errors. After coercion the dataclass's own ``validate()`` (if any) may add problems; they are
    reported together (a section's own validation is its parent's ``validate()``'s job: under ``run`` a section is
    only whole once the run has filled it in).
    """
    problems: list[str] = []
    with unchecked():  # checked here as a whole, once every value is in
        values = _collect(cls, yaml_values or {}, cli or {}, False, problems)
        bad = {p.split(":")[0].split(" ")[0] for p in problems}
        missing = [f for f in dataclasses.fields(cls) if (f.metadata.get("required") and values.get(f.name) is None)
                   or (f.name not in values and f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING)]
        problems += [f"{flag(f.name)} is required" for f in missing]
        cfg = None
        if not missing:
            cfg = cls(**values)
            # Validate what did parse too, so every problem is reported in one go; skip flags already reported.
            problems += [p for p in getattr(cfg, "validate", lambda: [])() if p.split(" ")[0] not in bad]
    if problems:
        raise ConfigError(problems, source)
    return cfg  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# Checked on construction (configs built in Python)


_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("checked_on_construction", default=True)


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Build configs inside the block without checking each on construction (the resolver checks the whole once
    every value is in; ``run`` checks its sections under their own flag names)."""
    token = _CHECKED.set(False)
    try:
        yield
    finally:
        _CHECKED.reset(token)


class Checked:
    """Base of a stage config: checked on construction (:func:`check`) unless built inside :func:`unchecked`."""

    def __post_init__(self) -> None:
        if _CHECKED.get():
            check(self)


def _later(cfg: Any) -> set[str]:
    """The flags of the fields still none whose default is none: a required option or one ``run`` fills, given
    when the stage runs, not necessarily on construction."""
    return {flag(f.name) for f in dataclasses.fields(cfg) if f.default is None and getattr(cfg, f.name) is None}


def check(cfg: Any, *, complete: bool = False) -> None:
    """Coerce ``cfg``'s values as the command line does (``"1e-4"`` -> 1e-4, a list -> a tuple) and raise one
    :class:`ConfigError` with every problem: a type, a choice, the config's own ``validate()``. Fields in
    :func:`_later` are not problems yet, unless ``complete`` (the stage is about to run): then a required one
    still none is."""
    problems: list[str] = []
    types_ = _field_types(type(cfg))
    later = _later(cfg)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_config(types_[f.name]) and isinstance(value, Mapping):  # a section as a mapping: sample={"beta": 1}
            with unchecked():
                value = types_[f.name](**{k.replace("-", "_"): v for k, v in value.items()})
            with flag_prefix(_PREFIX.get() + f.name + "."):
                try:
                    check(value)
                except ConfigError as e:
                    problems += e.problems
            object.__setattr__(cfg, f.name, value)
        if is_config(types_[f.name]) or flag(f.name) in later:
            continue
        try:
            object.__setattr__(cfg, f.name, _coerce(value, types_[f.name], flag(f.name)))
        except ValueError as e:
            problems.append(str(e))
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            object.__setattr__(cfg, f.name, default)  # so validate() sees a value of the right type
    _check_choices(type(cfg), {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, problems)
    if complete:
        problems += [f"{flag(f.name)} is required" for f in dataclasses.fields(cfg)
                     if f.metadata.get("required") and getattr(cfg, f.name) is None]
    skip = {p.split(":")[0].split(" ")[0] for p in problems} | (set() if complete else later)
    with unchecked():  # a config validating its sections (run) builds them; they are checked here, not there
        own = getattr(cfg, "validate", lambda: [])()
    problems += [p for p in own if p.split(":")[0].split(" ")[0] not in skip]
    if problems:
        raise ConfigError(problems)


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--flag`` per CLI field of ``cls`` (``--section.flag`` for a nested section's, in a group of its
    own; fields ``run`` sets are left out there); values are kept as given (strings) for :func:`resolve`."""
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or (prefix and f.metadata.get("run_sets")):
            continue
        if is_config(types_[f.name]):
            group = parser.add_argument_group(f"{f.name} options ({f.metadata.get('help', '')})")
            add_arguments(group, types_[f.name], prefix + f.name + ".")  # type: ignore[arg-type]
            continue
        base, optional = _unwrap_optional(types_[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        required = f.metadata.get("required") or (f.default is dataclasses.MISSING
                                                  and f.default_factory is dataclasses.MISSING)
        help_ = f.metadata.get("help", "")
        help_ += " (required)" if required else f" (default: {'none' if shown is None else shown})"
        name = "--" + prefix + f.name.replace("_", "-")
        kw: dict[str, Any] = dict(dest=prefix + f.name, default=argparse.SUPPRESS, help=help_.replace("%", "%%"))
        if base is bool and not optional:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kw)
        else:
            choices = f.metadata.get("choices")
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices else base.__name__.upper() if isinstance(
                base, type) else "VALUE"
            parser.add_argument(name, metavar=metavar, **kw)
            if f.metadata.get("positional"):
                parser.add_argument(f.name, nargs="?", metavar=f.name.upper(), default=argparse.SUPPRESS,
                                    help=f"same as {name}")


GLOBAL_ARGS = ("config", "command", "func", "log_level", "debug", "version")


def config_from_args(cls: type[T], ns: argparse.Namespace, default_config: str | None = None,
                     extra: Mapping[str, Any] | None = None) -> T:
    """Resolve ``cls`` from a parsed namespace that may carry ``config`` (a YAML path; ``default_config`` when
    none is given, ``none`` for no file) and stage flags; ``extra``: flags the parser did not know (reported as
    problems with the rest)."""
    cli = {k: v for k, v in vars(ns).items() if k not in GLOBAL_ARGS} | dict(extra or {})
    path = getattr(ns, "config", None) or default_config
    if path is None or str(path).lower() == "none":
        return resolve(cls, cli=cli)
    return resolve(cls, yaml_values=load_yaml(path), cli=cli, source=str(path))


def to_dict(cfg: Any, *, saved_only: bool = False, strip_run_set: bool = False) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config (tuples become lists, paths strings, sections dicts).

    ``saved_only`` leaves out one-off actions (``saved=False``); ``strip_run_set`` leaves out, inside sections,
    the fields ``run`` sets (so the dict replays as a ``run`` config)."""
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(i) for i in v]
        if isinstance(v, Path):
            return str(v)
        return v

    def walk(c: Any, nested: bool) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(c):
            if (saved_only and not f.metadata.get("saved", True)) or (
                    nested and strip_run_set and f.metadata.get("run_sets")):
                continue
            v = getattr(c, f.name)
            out[f.name] = walk(v, True) if dataclasses.is_dataclass(v) else conv(v)
        return out
    return walk(cfg, False)


def result_dict(cfg: Any) -> dict[str, Any]:
    """The settings of a stage config that can change its output (``result=True``), for fingerprints."""
    return {f.name: to_dict(cfg)[f.name] for f in dataclasses.fields(cfg)
            if f.metadata.get("result", True) and not is_config(_field_types(type(cfg))[f.name])}


def to_yaml(cfg: Any) -> str:
    """The config as YAML that replays it (``--config FILE``): saved settings only, sections without what run
    sets."""
    return yaml.safe_dump(to_dict(cfg, saved_only=True, strip_run_set=True), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write the resolved config (plus ``extra``, e.g. versions) as JSON, atomically."""
    path = Path(path)
    payload = {"config": to_dict(cfg), **(extra or {})}
    from .utils import write_json

    write_json(path, payload)
