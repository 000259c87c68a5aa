"""LightReasoner: a small amateur model shows a large expert where its reasoning matters (arXiv 2510.07962).

The Python API (:mod:`.api`), in the style of TRL: each stage is a function of its config dataclass, run exactly
as its command runs it, returning what it wrote and its ``meta.json``::

    from lightreasoner import SampleConfig, sample, train

    samples = sample(SampleConfig(output="runs/s/samples.jsonl", max_problems=8))
    adapter = train(samples=samples.path, output="runs/t")

Names are imported on first use, so ``import lightreasoner`` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute; None: the module itself, a callable stage module)
_LAZY: dict[str, tuple[str, str | None]] = {
    "sample": ("lightreasoner.sample", None),
    "train": ("lightreasoner.train", None),
    "merge": ("lightreasoner.merge", None),
    "evaluate": ("lightreasoner.evaluate", None),
    "sft": ("lightreasoner.sft", None),
    "run": ("lightreasoner.pipeline", "run"),
    "SampleConfig": ("lightreasoner.sample", "SampleConfig"),
    "TrainConfig": ("lightreasoner.train", "TrainConfig"),
    "MergeConfig": ("lightreasoner.merge", "MergeConfig"),
    "EvalConfig": ("lightreasoner.evaluate", "EvalConfig"),
    "SftConfig": ("lightreasoner.sft", "SFTConfig"),
    "SFTConfig": ("lightreasoner.sft", "SFTConfig"),
    "RunConfig": ("lightreasoner.pipeline", "RunConfig"),
    "StageOutput": ("lightreasoner.api", "StageOutput"),
    "load_config": ("lightreasoner.api", "load_config"),
    "ConfigError": ("lightreasoner.config", "ConfigError"),
    "InputError": ("lightreasoner.utils", "InputError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lightreasoner' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    if module_name == "lightreasoner.evaluate":  # callable like the other stages (the roof makes it so)
        importlib.import_module("lightreasoner.pipeline")
    return module if attr is None else getattr(module, attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
