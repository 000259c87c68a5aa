"""Batched decoding with a KV cache: the seam between the stages and the generation backend.

Stages ask for completions through :func:`generate` (eval, SFT) or drive :class:`CachedDecoder` step by step
(sampling, where the amateur follows the expert in lockstep). Both use left padding, pass explicit position ids,
and drop finished rows from the batch (and its cache), so a batch costs what its live rows cost. Decoding never
reads the model's ``generation_config``: greedy means argmax, sampling means the temperature given here.

Another backend (e.g. vLLM) plugs in by providing a function with :func:`generate`'s signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` input ids and attention mask, left padded to the longest prompt."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def cache_kwarg(model: Any) -> str:
    """The forward argument that takes the KV cache: ``cache`` (transformers >= 5.24) or ``past_key_values``.

    Passing the wrong one is silently ignored by older releases (every step would then see one token), so ask
    the model's own signature (through a PEFT wrapper to the model it wraps).
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


class CachedDecoder:
    """One model's incremental forward passes over a batch whose rows can be dropped as they finish.

    ``prefill`` returns the raw next-token logits ``[B, V]`` (before any logits processor) for the prompts;
    each ``step(tokens)`` feeds one token per live row and returns the next logits. ``keep(rows)`` retains
    only the given live rows (indices into the current batch) in the cache, mask and positions.
    ``capture_hidden=True`` also records the final hidden state that the output layer reads (``last_hidden``).
    """

    def __init__(self, model: Any, capture_hidden: bool = False):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache_kw = cache_kwarg(model)
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None
        self.last_hidden: torch.Tensor | None = None
        self._hook = None
        if capture_hidden:
            self._hook = model.get_output_embeddings().register_forward_pre_hook(self._grab)

    def _grab(self, module: Any, args: tuple) -> None:
        self.last_hidden = args[0][:, -1].detach()

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.mask = attention_mask
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                         use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        self.next_pos = pos[:, -1] + 1
        return out.logits[:, -1]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None and self.next_pos is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self.model(input_ids=tokens.view(-1, 1), attention_mask=self.mask,
                         position_ids=self.next_pos.view(-1, 1), use_cache=True, **{self.cache_kw: self.cache})
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        assert self.mask is not None and self.next_pos is not None
        if rows.numel() == self.mask.shape[0]:
            return
        rows = rows.to(self.device)
        self.cache.reorder_cache(rows)
        self.mask = self.mask[rows]
        self.next_pos = self.next_pos[rows]
        # Columns that are padding for every remaining row only cost attention time: drop them.
        live = self.mask.any(0)
        if not bool(live[0]) and hasattr(self.cache, "layers"):
            first = int(live.nonzero()[0])
            for layer in self.cache.layers:
                if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4:
                    layer.keys = layer.keys[:, :, first:]
                    layer.values = layer.values[:, :, first:]
            self.mask = self.mask[:, first:]


@dataclass
class Completion:
    """Generated ids (up to and including the first EOS; stop strings cut the text later) and why it ended."""

    ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length"
    stop_text: str | None = None


@dataclass
class StepView:
    """What a per-step hook sees: ``rows`` are the original batch indices of the live rows."""

    t: int
    rows: torch.Tensor  # [B_live] long
    logits: torch.Tensor  # [B_live, V] raw logits of the step
    extra: dict = field(default_factory=dict)


def pick_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Argmax for ``temperature == 0``, else a sample from ``softmax(logits / temperature)``."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).view(-1).to(logits.device)


@torch.inference_mode()
def generate(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int],
             pad_id: int, temperature: float = 0.0, seed: int | None = None,
             stop: Callable[[list[int]], str | None] | None = None,
             on_step: Callable[[StepView], None] | None = None) -> list[Completion]:
    """Decode one batch of prompts (token ids) with a KV cache; finished rows leave the batch.

    ``stop(ids) -> matched stop string or None`` is checked on each row's new ids after every step (for stop
    strings). ``on_step`` sees each step's raw logits. Returns one :class:`Completion` per prompt, in order.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    dec = CachedDecoder(model)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    out: list[list[int]] = [[] for _ in prompts]
    reasons: list[str | None] = [None] * len(prompts)
    stops: list[str | None] = [None] * len(prompts)
    rows = torch.arange(len(prompts), device=device)
    logits = dec.prefill(ids, mask)
    for t in range(max_new_tokens):
        if on_step is not None:
            on_step(StepView(t, rows, logits))
        tok = pick_tokens(logits, temperature, gen)
        tok_list = tok.tolist()
        done = torch.isin(tok, eos)
        for j, r in enumerate(rows.tolist()):
            out[r].append(tok_list[j])
            if bool(done[j]):
                reasons[r] = "eos"
            elif stop is not None and (hit := stop(out[r])) is not None:
                reasons[r], stops[r] = "stop", hit
                done[j] = True
        if t == max_new_tokens - 1:
            break
        live = (~done).nonzero().view(-1)
        if live.numel() == 0:
            break
        rows, tok = rows[live], tok[live]
        dec.keep(live)
        logits = dec.step(tok)
    dec.close()
    return [Completion(o, r or "length", s) for o, r, s in zip(out, reasons, stops)]
