"""Batched decoding with a KV cache: the seam between the stages and the generation backend.

Stages ask for completions through :func:`stream` / :func:`generate` (eval, SFT) or drive :class:`CachedDecoder`
step by step (sampling, where the amateur follows the expert in lockstep). Both use left padding, pass explicit
position ids, and drop finished rows from the batch (and its cache), so a batch costs what its live rows cost.
:func:`stream` goes further (continuous batching): a finished row's slot is refilled from the queue of waiting
prompts, whose prefilled cache is spliced into the running one, so the batch stays full until the queue is empty.
Decoding never reads the model's ``generation_config``: greedy means argmax, sampling means the temperature given
here, with one random generator per prompt (a prompt's sample does not depend on what it was batched with).

Another backend (e.g. vLLM) plugs in by providing a function with :func:`stream`'s signature.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

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


def _row_generators(seed: int | Sequence[int] | None, n: int) -> list[torch.Generator] | None:
    if seed is None:
        return None
    seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} prompts")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def pick_tokens(logits: torch.Tensor, temperature: float,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Argmax for ``temperature == 0``, else a sample from ``softmax(logits / temperature)``.

    ``generators[j]`` (optional) draws row ``j``'s sample, so it does not depend on the other rows.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    if generators is None:
        picked = torch.multinomial(probs, 1).view(-1)
    else:
        picked = torch.cat([torch.multinomial(probs[j], 1, generator=g) for j, g in enumerate(generators)])
    return picked.to(logits.device)


def stream(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int],
           pad_id: int, batch_size: int | None = None, temperature: float = 0.0,
           seed: int | Sequence[int] | None = None, stop: Callable[[list[int]], str | None] | None = None,
           on_step: Callable[[StepView], None] | None = None,
           refill: int | None = None) -> Iterator[tuple[int, Completion, float]]:
    """Decode prompts (token ids) with continuous batching; yield ``(index, completion, seconds)`` as rows finish.

    At most ``batch_size`` rows (default: all prompts) are live. Prompts wait in a queue, longest first (the
    cache is widest early and padding stays small); whenever at least ``refill`` slots are free (default
    ``batch_size // 8``, at least 1) the next prompts are prefilled together and join the batch. A row ends at an
    EOS id, when ``stop(ids)`` returns a stop string (checked after every step), or after ``max_new_tokens``.
    ``seconds`` is the row's share of the wall time (each forward's time split among the rows it served), so
    the shares add up to the whole. With ``temperature > 0`` prompt ``i`` samples from its own generator seeded
    ``seed + i`` (or ``seed[i]`` for a sequence). ``on_step`` sees each step's raw logits and live rows.
    """
    n = len(prompts)
    if n == 0:
        return
    slots = n if batch_size is None else max(1, int(batch_size))
    refill = max(1, slots // 8) if refill is None else max(1, int(refill))
    device = next(model.parameters()).device
    gens = _row_generators(seed, n) if temperature > 0 else None
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    queue = deque(sorted(range(n), key=lambda i: (-len(prompts[i]), i)))
    dec = CachedDecoder(model)
    out: dict[int, list[int]] = {}
    cost: dict[int, float] = {}
    rows: list[int] = []
    logits: torch.Tensor | None = None
    t = 0
    try:
        while queue or rows:
            free = slots - len(rows)
            if queue and free > 0 and (not rows or free >= min(refill, len(queue))):
                take = [queue.popleft() for _ in range(min(free, len(queue)))]
                t0 = time.perf_counter()
                ids, mask = left_pad([prompts[i] for i in take], pad_id, device)
                new = dec.admit(ids, mask)
                share = (time.perf_counter() - t0) / len(take)
                for i in take:
                    out[i], cost[i] = [], share
                rows = rows + take
                logits = new if logits is None else torch.cat([logits, new])
            assert logits is not None
            if on_step is not None:
                on_step(StepView(t, torch.tensor(rows, device=device), logits))
            t += 1
            with torch.inference_mode():
                tok = pick_tokens(logits, temperature, None if gens is None else [gens[r] for r in rows])
                done = torch.isin(tok, eos)
            tok_list, done_list = tok.tolist(), done.tolist()
            finished: list[tuple[int, Completion]] = []
            for j, r in enumerate(rows):
                ids_r = out[r]
                ids_r.append(tok_list[j])
                reason, hit = ("eos", None) if done_list[j] else (None, None)
                if reason is None and stop is not None and (hit := stop(ids_r)) is not None:
                    reason = "stop"
                if reason is None and len(ids_r) >= max_new_tokens:
                    reason = "length"
                if reason is not None:
                    done_list[j] = True
                    finished.append((r, Completion(ids_r, reason, hit)))
            for r, comp in finished:
                yield r, comp, cost.pop(r)
                del out[r]
            live = [j for j, d in enumerate(done_list) if not d]
            if not live:
                rows, logits = [], None
                dec.reset()
                continue
            if len(live) < len(rows):
                dec.keep(torch.tensor(live))
                rows = [rows[j] for j in live]
                tok = tok[torch.tensor(live, device=tok.device)]
            t0 = time.perf_counter()
            logits = dec.step(tok)
            share = (time.perf_counter() - t0) / len(rows)
            for r in rows:
                cost[r] += share
    finally:
        dec.close()


def generate(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int],
             pad_id: int, batch_size: int | None = None, temperature: float = 0.0,
             seed: int | Sequence[int] | None = None, stop: Callable[[list[int]], str | None] | None = None,
             on_step: Callable[[StepView], None] | None = None) -> list[Completion]:
    """:func:`stream` collected: one :class:`Completion` per prompt, in the prompts' order (default: one batch)."""
    result: list[Completion | None] = [None] * len(prompts)
    for i, comp, _ in stream(model, prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                             batch_size=batch_size, temperature=temperature, seed=seed, stop=stop, on_step=on_step):
        result[i] = comp
    return result  # type: ignore[return-value]
