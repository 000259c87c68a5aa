"""Batch-invariant incremental forward passes: a row's numbers never depend on the rows decoded beside it.

Greedy decoding flips at near-ties, so a completion is only reproducible if every logit of a row is the same bits
whatever its batch mates, the slot count, their order, the process count or where a killed run resumed. Padded
batches break that in two places, measured on this project's CPUs (``benchmarks/RESULTS.md``, issue 14):

- *Attention over padding.* ``scaled_dot_product_attention`` over a left-padded batch rounds differently with the
  amount of padding (the row's keys sit at other offsets of the kernel's blocks).
- *Row count of a matrix product.* A bf16 ``linear`` gives a row the same bits for any row count >= 2, but one
  row takes another kernel; a float32 ``linear`` (MKL) changes kernel with the row count from 4 rows on.

So :class:`CachedDecoder` never pads. Every forward is one packed sequence ``[1, N]`` of token rows: the prompts
being admitted (each whole, positions from 0) and one token per live row (decoding). Element-wise ops and
normalisations act per token (checked on CPUs: RMSNorm and SiLU give the same bits for any row count), and

- :class:`~.invariant.RowInvariant` (a ``TorchFunctionMode``, :mod:`.invariant`) runs every ``linear`` with a row
  count that cannot change a row's bits: bf16 on CPU natively with at least 2 rows (one row is duplicated),
  anything else in fixed tiles of rows (the last tile zero-padded), so every product has the same shape;
- attention is ours (registered as ``"lightreasoner"`` and switched on only inside the decoder's forwards): a
  prompt attends causally to its own keys alone (one ``scaled_dot_product_attention`` per prompt), and the decoding
  rows attend to their own cache rows over ``CHUNK``-column blocks, the value sums accumulated block by block in
  float32, so columns past a row's length (exact zeros after the softmax) add nothing and the width of the batch
  never enters a row's arithmetic.

The KV cache (:class:`SlotCache`) keeps row ``j`` at slot ``j`` from column 0: finishing rows frees slots (the last
live row moves into the hole, one row copied), admitting fills slots, nothing is ever concatenated or re-padded.
On CUDA kernels also follow the row count in reductions (RMSNorm's ``mean``) and batched products: there
``RowInvariant`` tiles the ``mean`` too, and the decoding attention (:func:`_decode_attention_fixed`) has one shape
whatever the batch (``benchmarks/RESULTS.md``, the GPU check; not yet measured there). What is not invariant:
across machines whose kernels differ (another CPU instruction set, another GPU), the bits differ.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from . import invariant
from .invariant import RowInvariant

ATTENTION = "lightreasoner"
CHUNK = 64  # key columns per block of the decoding attention
_GROW = 256  # cache columns are allocated in multiples of this


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` input ids and attention mask, left padded to the longest prompt (teacher-forced scoring)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def cache_kwarg(model: Any) -> str:
    """The forward argument that takes the KV cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


@contextlib.contextmanager
def _attention_of(model: Any, name: str) -> Iterator[None]:
    """Run ``model`` with attention implementation ``name`` (restored afterwards)."""
    config = next((m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")),
                  None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no transformers config: the decoder needs a transformers "
                         f"causal LM")
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


# ---------------------------------------------------------------------------------------------------------------
# The packed forward's plan, the cache, and the attention that reads them


@dataclass
class Plan:
    """What one packed forward holds, in token order: ``decode`` tokens first (one per live row, row ``j`` of the
    batch at ``slots[j]``, attending to ``lengths[j]`` cached keys including its own), then whole prompts
    (``prompts[k] = (offset, length)``), then ``ignored`` tokens (a duplicate making the forward >= 2 rows)."""

    decode: int
    slots: torch.Tensor | None  # [decode] long: each decoding token's slot
    lengths: torch.Tensor | None  # [decode] long
    prompts: list[tuple[int, int]]
    cache: "SlotCache | None"


class SlotCache:
    """Keys and values per layer, ``[slots, kv_heads, width, head_dim]`` in float32, row ``j`` at slot ``j``.

    Duck-types the one method a transformers attention layer calls (``update``): it stores the forward's fresh
    keys/values at each token's ``(slot, position)`` (``self.write``, set per forward) and returns them unchanged;
    :func:`attention` reads the buffers through the :class:`Plan`.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.write: tuple[torch.Tensor, torch.Tensor, int] | None = None  # (slots [n], positions [n], n)
        self.size = (0, 0)  # (slots, columns) of every buffer

    @torch.inference_mode()
    def ensure(self, slots: int, width: int) -> None:
        """Room for ``slots`` rows of ``width`` columns (allocated at the first forward; later grown, kept)."""
        s, w = max(slots, self.size[0]), -(-max(width, self.size[1]) // _GROW) * _GROW
        if (s, w) != self.size and self.keys:
            for store in (self.keys, self.values):
                for i, old in enumerate(store):
                    new = old.new_zeros((s, old.shape[1], w, old.shape[3]))
                    new[:old.shape[0], :, :old.shape[2]] = old
                    store[i] = new
        self.size = (s, w)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.write is not None
        slots, pos, n = self.write
        if layer_idx == len(self.keys):  # first forward: allocate what ensure() asked for
            shape = (*self.size[:1], key_states.shape[1], self.size[1], key_states.shape[3])
            self.keys.append(key_states.new_zeros(shape, dtype=torch.float32))
            self.values.append(value_states.new_zeros(shape, dtype=torch.float32))
        self.keys[layer_idx][slots, :, pos] = key_states[0, :, :n].transpose(0, 1).float()
        self.values[layer_idx][slots, :, pos] = value_states[0, :, :n].transpose(0, 1).float()
        return key_states, value_states

    @torch.inference_mode()
    def move(self, src: int, dst: int) -> None:
        """Copy slot ``src``'s rows to slot ``dst`` in every layer."""
        for store in (self.keys, self.values):
            for buf in store:
                buf[dst] = buf[src]


_PLAN: contextvars.ContextVar[Plan | None] = contextvars.ContextVar("lightreasoner_plan", default=None)


@contextlib.contextmanager
def _packed(model: Any, plan: Plan) -> Iterator[None]:
    """Run ``model``'s forwards with our attention reading ``plan``, and row-invariant products."""
    token = _PLAN.set(plan)
    try:
        with torch.inference_mode(), _attention_of(model, ATTENTION), RowInvariant():
            yield
    finally:
        _PLAN.reset(token)


def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
              scaling: float | None = None, dropout: float = 0.0, sliding_window: int | None = None,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The attention of a packed forward (``query [1, Hq, N, D]``, fresh ``key``/``value [1, Hkv, N, D]``);
    returns ``[1, N, Hq, D]`` as transformers' attention functions do. The layout comes from the current
    :class:`Plan` (the model's own mask is not used: transformers builds none for an unknown implementation)."""
    plan = _PLAN.get()
    if plan is None:
        raise RuntimeError(f"attention {ATTENTION!r} runs only inside lightreasoner's decoder")
    _, hq, n, d = query.shape
    out = query.new_zeros((n, hq, d))
    if plan.decode:
        assert plan.cache is not None and plan.slots is not None and plan.lengths is not None
        layer = module.layer_idx
        q = query[0, :, :plan.decode].transpose(0, 1)
        out[:plan.decode] = _decode_attention(q, plan.cache.keys[layer], plan.cache.values[layer], plan.slots,
                                              plan.lengths, scaling, sliding_window)
    for offset, length in plan.prompts:
        span = slice(offset, offset + length)
        q, k, v = query[:, :, span], key[:, :, span], value[:, :, span]
        mask = None
        if sliding_window is not None and length > sliding_window:
            i = torch.arange(length, device=q.device)
            mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - sliding_window)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling,
                                           enable_gqa=hq != k.shape[1])
        out[span] = o[0].transpose(0, 1)
    return out.unsqueeze(0), None


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                      lengths: torch.Tensor, scaling: float | None, window: int | None) -> torch.Tensor:
    """One query per row over its slot's first ``lengths[j]`` keys: ``q [B, Hq, D]`` -> ``[B, Hq, D]``.

    Rows sit at slots ``0..S-1`` (``slots`` a permutation of them). In float32 throughout (the cache keeps
    float32 copies of the keys and values: scores rounded to bf16 would blunt the softmax); the value products
    run over ``CHUNK``-column blocks so their shapes, hence their bits, do not depend on the batch's widest row.
    """
    if invariant.reduction_tile(q.device):
        return _decode_attention_fixed(q, keys, values, slots, lengths, scaling, window)
    b, hq, d = q.shape
    s, hkv = keys.shape[0], keys.shape[1]
    width = -(-int(lengths.max()) // CHUNK) * CHUNK
    order = torch.empty_like(slots)
    order[slots] = torch.arange(b, device=slots.device)  # slot -> row
    live = min(s, int(slots.max()) + 1)
    assert live == b, "decoding rows must fill slots 0..B-1"
    qg = q[order].reshape(b, hkv, hq // hkv, d).float()
    k, v = keys[:b, :, :width], values[:b, :, :width]
    scores = torch.matmul(qg, k.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
    cols = torch.arange(width, device=q.device)
    n = lengths[order]
    masked = cols[None, :] >= n[:, None]
    if window is not None:
        masked |= cols[None, :] < (n - window)[:, None]
    scores.masked_fill_(masked[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    acc = torch.matmul(p[..., :CHUNK], v[:, :, :CHUNK])
    for c in range(CHUNK, width, CHUNK):
        acc += torch.matmul(p[..., c:c + CHUNK], v[:, :, c:c + CHUNK])
    return acc.to(q.dtype).reshape(b, hq, d)[slots]


def _decode_attention_fixed(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                            lengths: torch.Tensor, scaling: float | None, window: int | None) -> torch.Tensor:
    """:func:`_decode_attention` in calls whose shapes never depend on the batch (for devices whose kernels change
    with the shape): rows in tiles of :func:`.invariant.reduction_tile` (the last padded with copies of its last
    row), keys and values in ``CHUNK``-column blocks, copied contiguous. The softmax's maximum is exact in any order,
    and its sum is taken by the value products themselves (a ones column appended to each value block)."""
    b, hq, d = q.shape
    hkv = keys.shape[1]
    order = torch.empty_like(slots)
    order[slots] = torch.arange(b, device=slots.device)  # slot -> row
    qg = q[order].reshape(b, hkv, hq // hkv, d).float()
    n = lengths[order]
    width = -(-int(n.max()) // CHUNK) * CHUNK
    scale = scaling if scaling is not None else d ** -0.5
    cols = torch.arange(width, device=q.device)
    ones = None

    def tile(qt: torch.Tensor, nt: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        nonlocal ones
        scores = torch.cat([torch.matmul(qt, keys[rows, :, c:c + CHUNK].transpose(-1, -2))
                            for c in range(0, width, CHUNK)], dim=-1) * scale
        masked = cols[None, :] >= nt[:, None]
        if window is not None:
            masked |= cols[None, :] < (nt - window)[:, None]
        scores.masked_fill_(masked[:, None, None, :], float("-inf"))
        p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        acc = None
        for c in range(0, width, CHUNK):
            v = values[rows, :, c:c + CHUNK]
            ones = v.new_ones((*v.shape[:-1], 1)) if ones is None else ones
            term = torch.matmul(p[..., c:c + CHUNK].contiguous(), torch.cat([v, ones], -1))
            acc = term if acc is None else acc + term
        return acc[..., :d] / acc[..., d:]

    out = invariant.rowwise(tile, qg, n, torch.arange(b, device=q.device))
    return out.to(q.dtype).reshape(b, hq, d)[slots]


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, attention)


# ---------------------------------------------------------------------------------------------------------------
# The decoder


class CachedDecoder:
    """One model's incremental forward passes over a batch whose rows come and go; see the module doc.

    ``admit(prompts)`` prefills prompts (token id lists) as new last rows of the batch and returns their next-token
    logits ``[k, V]``; ``step(tokens)`` feeds one token per live row and returns the next logits ``[B, V]``;
    ``keep(rows)`` keeps the given live rows, in that order; ``reset()`` forgets the batch. Raw logits, before any
    logits processor. ``capture_hidden=True`` also records the final hidden states the output layer reads
    (``last_hidden``, one row per returned logit row).
    """

    def __init__(self, model: Any, capture_hidden: bool = False):
        _register()
        self.model = model
        self.device = next(model.parameters()).device
        self.cache_kw = cache_kwarg(model)
        self.cache = SlotCache()
        self.slot_of: list[int] = []  # live row j -> its slot
        self.length: list[int] = []  # live row j -> tokens in its cache
        self.last_hidden: torch.Tensor | None = None
        self.capture_hidden = capture_hidden
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if head is None and capture_hidden:
            raise ValueError(f"capture_hidden needs the model's output layer, and {type(model).__name__} has no "
                             f"get_output_embeddings(); pass a transformers causal LM")
        self._hook = head.register_forward_pre_hook(self._before_output_layer) if capture_hidden else None

    def _before_output_layer(self, module: Any, args: tuple) -> None:
        self.last_hidden = args[0][0].detach()

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @property
    def rows(self) -> int:
        return len(self.slot_of)

    def _forward(self, ids: list[int], pos: list[int], slots: list[int], plan: Plan, keep: list[int]) -> torch.Tensor:
        """One packed forward; returns the logits at token indices ``keep``."""
        n = len(ids)
        if n == 1:  # one token row would take another kernel: run it twice, ignore the copy
            ids, pos = ids * 2, pos * 2
        if len(keep) == 1:
            keep = keep * 2
        dev = self.device
        self.cache.write = (torch.tensor(slots, device=dev), torch.tensor(pos[:n], device=dev), n)
        with _packed(self.model, plan):
            out = self.model(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([pos], device=dev),
                             use_cache=True, logits_to_keep=torch.tensor(keep, device=dev),
                             **{self.cache_kw: self.cache})
        self.cache.write = None
        logits = out.logits[0]
        if len(keep) == 2 and keep[0] == keep[1]:
            logits = logits[:1]
            if self.last_hidden is not None and self.capture_hidden:
                self.last_hidden = self.last_hidden[:1]
        return logits

    def admit(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill ``prompts`` as new last rows of the batch; their next-token logits ``[k, V]``."""
        first = self.rows
        self.cache.ensure(first + len(prompts), max(len(p) for p in prompts))
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        spans: list[tuple[int, int]] = []
        for k, p in enumerate(prompts):
            if not len(p):
                raise ValueError("cannot decode from an empty prompt")
            spans.append((len(ids), len(p)))
            ids += list(p)
            pos += range(len(p))
            slots += [first + k] * len(p)
        plan = Plan(0, None, None, spans, self.cache)
        logits = self._forward(ids, pos, slots, plan, [o + m - 1 for o, m in spans])
        self.slot_of += [first + k for k in range(len(prompts))]
        self.length += [len(p) for p in prompts]
        return logits

    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Start a new batch with ``prompts``."""
        self.reset()
        return self.admit(prompts)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens[j]`` to live row ``j``; the next logits ``[B, V]``."""
        b = self.rows
        self.cache.ensure(b, max(self.length) + 1)
        pos = list(self.length)
        slots = torch.tensor(self.slot_of, device=self.device)
        lengths = torch.tensor(pos, device=self.device) + 1
        plan = Plan(b, slots, lengths, [], self.cache)
        logits = self._forward(tokens.view(-1).tolist(), pos, self.slot_of, plan, list(range(b)))
        self.length = [m + 1 for m in self.length]
        return logits

    def keep(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Keep live rows ``rows`` (indices into the current batch), in that order; their slots become 0..k-1."""
        rows = [int(r) for r in (rows.tolist() if isinstance(rows, torch.Tensor) else rows)]
        slot_of = [self.slot_of[r] for r in rows]
        self.length = [self.length[r] for r in rows]
        k = len(rows)
        holes = sorted(set(range(k)) - set(slot_of))
        for j, s in enumerate(slot_of):
            if s >= k:  # move it into a free low slot
                dst = holes.pop(0)
                self.cache.move(s, dst)
                slot_of[j] = dst
        self.slot_of = slot_of

    def reset(self) -> None:
        """Forget the batch (buffers are kept for the next one)."""
        self.slot_of, self.length = [], []


def hidden_states(model: Any, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Final hidden states ``[len(s), H]`` of each whole sequence, read causally and batch-invariantly
    (teacher-forced scoring): one packed forward of the inner model, no cache."""
    _register()
    dev = next(model.parameters()).device
    ids: list[int] = []
    pos: list[int] = []
    spans: list[tuple[int, int]] = []
    for s in sequences:
        spans.append((len(ids), len(s)))
        ids += list(s)
        pos += range(len(s))
    if len(ids) == 1:
        ids, pos = ids * 2, pos * 2
    plan = Plan(0, None, None, spans, None)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, inner.base_model_prefix, inner)
    with _packed(model, plan):
        h = body(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([pos], device=dev),
                 use_cache=False).last_hidden_state[0]
    return [h[o:o + m] for o, m in spans]
