"""The Python API, in the style of TRL: each stage is a function of its config dataclass.

    from lightreasoner import sample, train, SampleConfig

    out = sample(SampleConfig(output="runs/s/samples.jsonl", max_problems=8))
    adapter = train(samples=out.path, output="runs/t")        # keyword arguments build the config
    print(adapter.path, adapter.meta["counts"]["updates"])

A stage function runs exactly what its command runs (``lightreasoner sample`` is ``sample.main(cfg)``): the same
checks, the same folder and ``meta.json``, the same resume and rerun rules; errors are raised (a
:class:`~lightreasoner.config.ConfigError` or :class:`~lightreasoner.utils.InputError`, worded as at the command
line) instead of printed. It returns a :class:`StageOutput`: what the stage wrote and its ``meta.json``.

The stage modules ``sample``, ``train``, ``merge``, ``evaluate`` and ``sft`` are themselves callable
(:func:`expose`), so ``from lightreasoner import sample`` gives the module (its config, its ``main``) and the
function at once; ``run`` is :func:`lightreasoner.pipeline.run`. Nothing here imports a stage.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import check, load_yaml, resolve, unchecked
from .layout import read_meta
from .utils import InputError


@dataclass(frozen=True)
class StageOutput:
    """What a stage wrote: ``path`` is its output as the next stage takes it (the samples file, the adapter
    folder, the merged model, the evaluation folder, the run folder); ``meta`` its folder's ``meta.json`` (for a
    run: each stage's, by stage name), ``None`` when the stage stopped before finishing (``--stop-after``)."""

    path: Path | None
    meta: dict[str, Any] | None


def folder_output(cfg: Any) -> StageOutput:
    """The output of a stage whose ``--output`` is its folder."""
    if cfg.output is None:
        return StageOutput(None, None)
    return StageOutput(Path(cfg.output), read_meta(cfg.output))


def file_output(cfg: Any) -> StageOutput:
    """The output of a stage whose ``--output`` is a file in its folder (``sample``)."""
    return StageOutput(Path(cfg.output), read_meta(Path(cfg.output).parent))


def build(config_cls: type, config: Any = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """``config`` (an instance of ``config_cls``) with ``overrides`` replaced, or ``config_cls(**overrides)``;
    checked whole: every problem, missing required options included, in one ConfigError."""
    overrides = dict(overrides or {})
    if config is not None and not isinstance(config, config_cls):
        raise TypeError(f"expected a {config_cls.__name__}, got {type(config).__name__}")
    with unchecked():  # checked once, whole, below
        if config is None:
            config = config_cls(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
    check(config, complete=True)
    return config


def call(config_cls: type, main: Callable[[Any], int], config: Any = None, overrides: Mapping[str, Any] | None = None,
         output: Callable[[Any], StageOutput] = folder_output, command: str = "") -> StageOutput:
    """Run a stage's ``main`` on its config as the command does; a non-zero exit code is an error."""
    cfg = build(config_cls, config, overrides)
    rc = main(cfg)
    if rc:
        raise InputError(f"{command or config_cls.__name__} stopped with exit code {rc}; fix the cause and call it "
                         f"again to resume")
    return output(cfg)


class StageModule(types.ModuleType):
    """A stage module that is also its stage function: ``sample(cfg)`` or ``sample(output=..., beta=0.6)``."""

    __api__: tuple[type, Callable[[Any], int], Callable[[Any], StageOutput], str]

    def __call__(self, config: Any = None, /, **overrides: Any) -> StageOutput:
        config_cls, main, output, command = self.__api__
        return call(config_cls, main, config, overrides, output, command)


def expose(module_name: str, config_cls: type, main: Callable[[Any], int],
           output: Callable[[Any], StageOutput] = folder_output, command: str = "") -> None:
    """Make the (imported) stage module ``module_name`` callable as its stage function (see the module doc)."""
    module = sys.modules[module_name]
    module.__class__ = StageModule
    module.__api__ = (config_cls, main, output, command or module_name.rsplit(".", 1)[-1])  # type: ignore[attr-defined]


def load_config(config_cls: type, path: str | Path, **overrides: Any) -> Any:
    """``config_cls`` from a YAML file (or a shipped config's name, e.g. ``embedded``), ``overrides`` over it:
    what ``lightreasoner COMMAND --config PATH --FLAG VALUE`` resolves (a section takes a mapping:
    ``sample={"beta": 0.6}``)."""
    return resolve(config_cls, yaml_values=load_yaml(path), cli=overrides, source=str(path))
