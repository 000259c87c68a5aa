"""LoRA adapters folded into a model's weights: what ``lightreasoner merge`` writes and what ``eval --adapter``
evaluates, computed one way (float32, then each tensor back to its own dtype)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import models
from .utils import read_json


def merge_adapter(base: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """``base`` + LoRA adapter -> a plain transformers model with the adapter folded into its weights.

    The fold is done in float32 and each tensor goes back to its own dtype (a blanket ``.to(bf16)`` would also
    round float32 buffers such as rotary frequencies), so a bf16 model folded in memory equals the bf16
    checkpoint ``merge`` writes from a float32 load. PEFT freezes the base weights; the fold gives each parameter
    back its own ``requires_grad`` too, so the result is the base model with new weights and nothing else changed.
    """
    from peft import PeftModel

    dtypes = {n: t.dtype for n, t in [*base.named_parameters(), *base.named_buffers()]}
    trainable = {n: p.requires_grad for n, p in base.named_parameters()}
    merged = PeftModel.from_pretrained(base.float(), str(adapter_dir)).merge_and_unload()
    for n, t in [*merged.named_parameters(), *merged.named_buffers()]:
        t.data = t.data.to(dtypes.get(n, t.dtype))
    for n, p in merged.named_parameters():
        p.requires_grad_(trainable.get(n, p.requires_grad))
    return merged


def stored_dtype(src: models.ModelSource | None) -> torch.dtype:
    """The dtype a checkpoint folder stores its weights in (its config.json), float32 when unknown."""
    if src is not None and src.kind in ("folder", "embedded") and (Path(src.path) / "config.json").is_file():
        cfg = read_json(Path(src.path) / "config.json")
        name = cfg.get("dtype") or cfg.get("torch_dtype")
        if name in ("float32", "bfloat16", "float16"):
            return getattr(torch, name)
    return torch.float32
