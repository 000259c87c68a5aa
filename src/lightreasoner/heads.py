"""Next-token logits from final hidden states, as the model's own forward computes them.

Sampling scores many steps from hidden states it has already computed (the decoder's, or one teacher-forced pass)
by applying the output layer itself, and training's fallback path does the same at kept positions. Some families
change the logits after the output layer, and a bare ``lm_head(h)`` would then score other distributions than the
model's: Gemma 2's ``final_logit_softcapping`` (``cap * tanh(x / cap)``), Cohere's ``logit_scale`` (``x * s``),
Granite's ``logits_scaling`` (``x / s``). :func:`output_logits` applies them as those forwards do, and
:func:`check_output_logits` holds a model to it on a short probe (one small forward), so a family with a transform
not listed here is refused by name before any work instead of being scored on the wrong logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .utils import InputError


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def output_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``[..., H]`` final hidden states (what the output layer reads) -> ``[..., R]`` logits, ``R`` its rows: the
    output layer, then the family's scaling where the model's config sets one (see the module doc)."""
    head = model.get_output_embeddings()
    logits = head(hidden.to(head.weight.device))
    config = _text_config(model)
    scale = getattr(config, "logit_scale", None)  # Cohere
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    divide = getattr(config, "logits_scaling", None)  # Granite
    if isinstance(divide, (int, float)) and divide != 1:
        logits = logits / divide
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2
    if isinstance(cap, (int, float)) and cap > 0:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def check_output_logits(model: Any, role: str, tokens: int = 6) -> None:
    """Raise :class:`InputError` unless :func:`output_logits` of the hidden states the output layer reads gives the
    logits ``model``'s forward returns, on ``tokens`` probe ids (one small forward)."""
    head = model.get_output_embeddings()
    if head is None:
        raise InputError(f"the {role} ({type(model).__name__}) has no output layer (get_output_embeddings() is "
                         f"None); pass a transformers causal LM")
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        rows = int(head.weight.shape[0])
        ids = torch.arange(1, tokens + 1, device=head.weight.device).remainder(rows)[None]
        theirs = model(input_ids=ids, use_cache=False).logits.float()
    finally:
        hook.remove()
    ours = output_logits(model, seen[-1]).float()
    scale = max(float(theirs.abs().max()), 1.0)
    if ours.shape != theirs.shape or not math.isclose(float((ours - theirs).abs().max()) / scale, 0.0,
                                                      abs_tol=1e-3):
        raise InputError(f"the {role} ({type(model).__name__}) changes its logits after the output layer in a way "
                         f"lightreasoner does not reproduce (it knows Gemma 2's softcapping, Cohere's logit_scale "
                         f"and Granite's logits_scaling): its steps would be scored on other distributions than "
                         f"the model's. Choose a model of another family, or add its transform to "
                         f"lightreasoner.heads.output_logits")
