"""The expert's own early layers as the amateur (``--amateur self:LAYER``), as DoLa contrasts layers.

DoLa (Chuang et al. 2023) reads a "premature" distribution off an early layer of the same model: the hidden state
after decoder layer ``LAYER`` (``hidden_states[LAYER]`` of a transformers forward with ``output_hidden_states``),
through the model's final norm and output layer. ``--amateur self:LAYER`` makes that distribution the amateur,
with the same label math and records as a second model; no second model is loaded.

:func:`early_exit_view` builds a causal LM *view* of the expert that runs decoder layers ``0 .. LAYER-1`` and then
the expert's own final norm and output layer. It holds no weights of its own: every parameter and buffer is the
expert's tensor (same storage). It is made of *twins*: shallow copies of the expert's modules with their own
child tables, so the view's layer list, config and output layer can differ without touching the expert:

- the causal LM, its inner model and each kept decoder layer and attention are twins reading a copied config
  (``num_hidden_layers = LAYER``, per-layer lists such as ``layer_types`` truncated), so the view's forward stops
  at LAYER, and the attention implementation that :mod:`.decoder` switches on the view's config for its forwards
  is the one the view's attention reads (the expert's config is never touched);
- the output layer is a twin with no hooks: hooks that :class:`.decoder.CachedDecoder` registers on the view's
  output layer never fire for the expert's and vice versa, so an expert decoder and a view decoder can be alive
  together (sampling's lockstep mode);
- any other module that keeps the config (in Qwen2 and Llama also each MLP and the rotary embedding) is a twin
  too, for the same reason; modules that read no config (norms, linears, embeddings) are the expert's own objects.

The KV cache of a view has LAYER layers; it is the view decoder's own, so the expert's cache is never shared.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from .models import LoadedModel
from .utils import InputError

logger = logging.getLogger(__name__)

PREFIX = "self:"
FORM = "self:LAYER (an integer, 1 <= LAYER < the expert's decoder layer count)"


def parse_self_spec(spec: str, flag: str = "--amateur") -> int | None:
    """``self:12`` -> 12; ``None`` for any other spec (a model); an :class:`InputError` for a malformed ``self:``."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        return None
    text = spec[len(PREFIX):].strip()
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise InputError(f"{flag} {spec!r}: the expert's early layer is written {FORM}, e.g. self:12")
    return int(text)


def is_self_spec(spec: Any) -> bool:
    """Whether ``spec`` asks for the expert's early layers (well formed or not)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def self_fingerprint(expert_fingerprint: str, layer: int) -> str:
    """The identity of the expert's early layer ``layer``: ``self:LAYER of <the expert's fingerprint>``, so it
    changes when the expert or the layer changes."""
    return f"{PREFIX}{layer} of {expert_fingerprint}"


def layer_count(model: Any) -> int:
    """The decoder layer count of a transformers causal LM (``config.num_hidden_layers``)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise InputError(f"--amateur self:LAYER: the expert {type(model).__name__} has no config.num_hidden_layers; "
                         f"the early-exit amateur needs a transformers decoder-only causal LM")
    return n


def check_layer(model: Any, layer: int, flag: str = "--amateur") -> None:
    """An :class:`InputError` unless ``1 <= layer < `` the model's decoder layer count."""
    n = layer_count(model)
    if not 1 <= layer < n:
        raise InputError(f"{flag} self:{layer}: the expert has {n} decoder layers, so LAYER must be 1..{n - 1} "
                         f"(the hidden state after decoder layer LAYER; self:{n} would be the expert itself)")


def _twin(module: nn.Module, hooks: bool = True) -> nn.Module:
    """A shallow copy of ``module`` with child, parameter and buffer tables of its own (the same tensors): setting
    a child of the twin leaves the original alone. ``hooks``: keep the original's hooks as of now (transformers'
    output-capture hooks), else none; hooks registered later on either are the registrant's alone."""
    twin = copy.copy(module)
    for name in ("_modules", "_parameters", "_buffers"):
        twin.__dict__[name] = OrderedDict(module.__dict__[name])
    for name, table in module.__dict__.items():
        if name.startswith("_") and "hooks" in name and isinstance(table, dict):
            twin.__dict__[name] = OrderedDict(table) if hooks else OrderedDict()
    return twin


def _rewire(module: nn.Module, old: Any, new: Any) -> nn.Module:
    """``module`` itself when nothing under it reads the config ``old``, else a twin (and twins down to the
    readers) reading ``new`` instead."""
    children = {name: _rewire(child, old, new) for name, child in module.named_children()}
    reads = getattr(module, "config", None) is old
    if not reads and all(children[n] is c for n, c in module.named_children()):
        return module
    twin = _twin(module)
    for name, child in children.items():
        twin._modules[name] = child
    if reads:
        twin.__dict__["config"] = new
    return twin


def _short_config(config: Any, layer: int) -> Any:
    """A copy of ``config`` for the first ``layer`` decoder layers: ``num_hidden_layers`` and every per-layer list
    (a list as long as the layer count, e.g. ``layer_types``) cut to ``layer``."""
    n = config.num_hidden_layers
    short = copy.deepcopy(config)
    for key, value in vars(config).items():
        if isinstance(value, (list, tuple)) and len(value) == n:
            setattr(short, key, type(value)(value[:layer]))
    short.num_hidden_layers = layer
    return short


def _plain(model: Any) -> None:
    """An :class:`InputError` unless ``model`` is a plain transformers causal LM with ``<inner>.layers``."""
    if hasattr(model, "get_base_model") or hasattr(model, "peft_config"):
        raise InputError("--amateur self:LAYER: the expert is wrapped in a PEFT adapter; merge the adapter first "
                         "(lightreasoner merge) and pass the merged folder as --expert")
    prefix = getattr(model, "base_model_prefix", None)
    inner = getattr(model, prefix, None) if prefix else None
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or model.get_output_embeddings() is None:
        raise InputError(f"--amateur self:LAYER: {type(model).__name__} is not a decoder-only causal LM of the "
                         f"shape the early exit knows (an inner model with .layers, and an output layer)")
    if len(layers) != layer_count(model):
        raise InputError(f"--amateur self:LAYER: {type(model).__name__} has {len(layers)} layers but its config "
                         f"says {layer_count(model)}")


def early_exit_view(model: Any, layer: int) -> nn.Module:
    """A causal LM sharing ``model``'s parameters that runs decoder layers ``[0, layer)`` then ``model``'s final
    norm and output layer (see the module doc). ``1 <= layer < num_hidden_layers``, else an :class:`InputError`."""
    _plain(model)
    check_layer(model, layer)
    config = model.config
    short = _short_config(config, layer)
    inner_name = model.base_model_prefix
    inner = getattr(model, inner_name)
    cut = _twin(inner)
    cut._modules["layers"] = nn.ModuleList(list(inner.layers)[:layer])
    cut = _rewire(cut, config, short)  # reads config: a twin of it reading ``short``
    view = _twin(model)
    view._modules[inner_name] = cut
    for name, child in model.named_children():
        if name != inner_name:
            view._modules[name] = _rewire(child, config, short)
    head = model.get_output_embeddings()
    head_name = next(n for n, c in model.named_children() if c is head)
    view._modules[head_name] = _twin(view._modules[head_name], hooks=False)
    view.__dict__["config"] = short
    logger.info("early-exit view of %s: decoder layers 0..%d of %d, then the final norm and output layer",
                type(model).__name__, layer - 1, config.num_hidden_layers)
    return view


@dataclass
class EarlyExitModel(LoadedModel):
    """A :class:`LoadedModel` around an early-exit view of an expert (its tokenizer, a fingerprint of the expert's
    and the layer); :meth:`describe` says what it is."""

    layer: int = 0
    expert: LoadedModel | None = None

    def describe(self) -> dict[str, Any]:
        assert self.expert is not None
        of = self.expert.describe()
        return {"spec": self.spec, "fingerprint": self.fingerprint, "kind": "early exit", "layer": self.layer,
                "layers_of_expert": layer_count(self.expert.model),
                "weights": f"the expert's first {self.layer} decoder layers, then its final norm and output layer "
                           f"({self.expert.spec})",
                "of": of, "dtype": of.get("dtype"), "parameters": sum(p.numel() for p in self.model.parameters()),
                "shares_weights_with_expert": True, "vocab_rows": self.vocab_rows}


def load_early_exit(spec: str, expert: LoadedModel) -> EarlyExitModel:
    """The amateur of ``--amateur self:LAYER`` for a loaded expert (no weights loaded or copied)."""
    layer = parse_self_spec(spec)
    if layer is None:
        raise ValueError(f"{spec!r} is not a self:LAYER spec")
    view = early_exit_view(expert.model, layer)
    return EarlyExitModel(view, expert.tokenizer, f"{PREFIX}{layer}", self_fingerprint(expert.fingerprint, layer),
                          None, layer=layer, expert=expert)
