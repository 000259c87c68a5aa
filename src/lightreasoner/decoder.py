"""Incremental forward passes with a KV cache over a batch whose rows come and go (the decoding loop's engine).

:class:`CachedDecoder` prefills left-padded prompts (:func:`left_pad`), steps one token per live row, drops finished
rows from its cache (:meth:`CachedDecoder.keep`) and splices newly prefilled rows in (:meth:`CachedDecoder.admit`),
always with explicit position ids. The decoding loop that drives it is :func:`lightreasoner.generation.stream`.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

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


def _pad_time(x: torch.Tensor, width: int) -> torch.Tensor:
    """Left pad the time axis (``-2`` for ``[B, H, T, D]`` caches, ``-1`` for ``[B, T]`` masks) with zeros."""
    axis = -2 if x.dim() == 4 else -1
    missing = width - x.shape[axis]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[axis] = missing
    return torch.cat([x.new_zeros(shape), x], dim=axis)


class CachedDecoder:
    """One model's incremental forward passes over a batch whose rows can be dropped as they finish.

    ``prefill`` returns the raw next-token logits ``[B, V]`` (before any logits processor) for the prompts;
    each ``step(tokens)`` feeds one token per live row and returns the next logits. ``keep(rows)`` retains
    only the given live rows (indices into the current batch) in the cache, mask and positions.
    ``capture_hidden=True`` also records the final hidden state that the output layer reads (``last_hidden``).

    The output layer always gets a contiguous input. A prefill keeps one position (``hidden[:, -1:, :]``, a
    strided view), and on CPU ``torch.matmul`` only folds such a 3-d input into one matrix product when the
    weight requires grad; for a frozen model (``requires_grad_(False)``, or one that PEFT has merged) it falls
    back to a batched product over ``B`` expanded copies of the ``[V, H]`` weight, hundreds of times slower for a
    150k-token vocabulary (``benchmarks/bench_generation.py``). Copying the ``[B, 1, H]`` view costs nothing.
    """

    def __init__(self, model: Any, capture_hidden: bool = False):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache_kw = cache_kwarg(model)
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None
        self.last_hidden: torch.Tensor | None = None
        self.capture_hidden = capture_hidden
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if head is None and capture_hidden:
            raise ValueError(f"capture_hidden needs the model's output layer, and {type(model).__name__} has no "
                             f"get_output_embeddings(); pass a transformers causal LM")
        self._hook = head.register_forward_pre_hook(self._before_output_layer) if head is not None else None

    def _before_output_layer(self, module: Any, args: tuple) -> tuple:
        hidden = args[0]
        if self.capture_hidden:
            self.last_hidden = hidden[:, -1].detach()
        return (hidden.contiguous(), *args[1:])

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[Any, torch.Tensor,
                                                                                       torch.Tensor]:
        """Run left-padded prompts into a new cache: ``(cache, next positions [B], last logits [B, V])``."""
        from transformers import DynamicCache

        cache = DynamicCache()
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                         use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
        return cache, pos[:, -1] + 1, out.logits[:, -1]

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.cache, self.next_pos, logits = self._encode(input_ids, attention_mask)
        self.mask = attention_mask
        return logits

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None and self.next_pos is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        out = self.model(input_ids=tokens.view(-1, 1), attention_mask=self.mask,
                         position_ids=self.next_pos.view(-1, 1), use_cache=True, **{self.cache_kw: self.cache})
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1]

    @torch.inference_mode()
    def admit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Prefill more prompts and splice them into the live batch (appended as its last rows).

        The new rows' cache and the live one are left padded to a common width (padding is masked out, and
        positions are per row), then concatenated along the batch. Returns the new rows' logits ``[k, V]``.
        """
        if self.cache is None or self.mask is None or self.mask.shape[0] == 0:
            return self.prefill(input_ids, attention_mask)
        if not hasattr(self.cache, "layers"):
            raise RuntimeError("continuous batching needs a transformers Cache with per-layer tensors "
                               "(transformers >= 4.56); use batch_size large enough for all prompts instead")
        cache, next_pos, logits = self._encode(input_ids, attention_mask)
        width = max(self.mask.shape[1], attention_mask.shape[1])
        for live, new in zip(self.cache.layers, cache.layers):
            live.keys = torch.cat([_pad_time(live.keys, width), _pad_time(new.keys, width)])
            live.values = torch.cat([_pad_time(live.values, width), _pad_time(new.values, width)])
        self.mask = torch.cat([_pad_time(self.mask, width), _pad_time(attention_mask, width)])
        self.next_pos = torch.cat([self.next_pos, next_pos])
        return logits

    def reset(self) -> None:
        """Forget the batch (the next :meth:`admit` starts a new one)."""
        self.cache = self.mask = self.next_pos = None

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
