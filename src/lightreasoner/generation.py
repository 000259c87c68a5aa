"""Batched decoding with a KV cache: the one decoding loop, and the seam between the stages and the backend.

:func:`stream` is the loop (every stage decodes through it) over a batch-invariant engine
(:class:`~lightreasoner.decoder.CachedDecoder`: rows are packed, never padded, so a prompt's completion is the same
token for token whatever it is decoded with, however many slots, in whatever order, in however many processes):
finished rows leave the batch and free their cache slot, so a batch costs what its live rows cost, and continuous
batching: a finished row's slot is refilled from the queue of waiting prompts, so the batch stays full until the
queue is empty. A
per-step hook (``on_step``) sees each step's raw logits, live rows, the tokens just fed and, on request, the
final hidden states; sampling scores the amateur against the expert there. Decoding never reads the model's
``generation_config``: greedy means argmax, sampling means the temperature given here, with one random generator
per prompt (a prompt's sample does not depend on what it was batched with).

On top of it, text: :func:`iter_generate` / :func:`generate_texts` decode with stop strings (:class:`StopChecker`)
and post-process the text (:func:`postprocess_completion`, spec section 2) for eval and SFT.

Another backend (e.g. vLLM) plugs in by providing a function with :func:`stream`'s signature.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from .decoder import CachedDecoder, cache_kwarg, left_pad
from .prompts import STOP_STRINGS
from .prompts import eos_ids as find_eos_ids  # (iter_generate has an eos_ids parameter)

__all__ = ["CachedDecoder", "cache_kwarg", "left_pad", "Completion", "StepView", "pick_tokens", "pad_id_of",
           "stream", "generate", "StopChecker", "postprocess_completion", "GenOutput", "batch_slots",
           "iter_generate", "generate_texts"]


@dataclass
class Completion:
    """Generated ids (up to and including the first EOS; stop strings cut the text later) and why it ended."""

    ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length"
    stop_text: str | None = None


@dataclass
class StepView:
    """What a per-step hook sees, before the step's tokens are picked: ``rows`` are the original batch indices
    of the live rows; ``fed[j]`` is the token row ``j`` was just fed to get ``logits[j]`` (``-1``: the row was
    just prefilled, its logits are its prompt's); ``hidden`` the final hidden states (``capture_hidden``)."""

    t: int
    rows: torch.Tensor  # [B_live] long
    logits: torch.Tensor  # [B_live, V] raw logits of the step
    fed: torch.Tensor | None = None  # [B_live] long
    hidden: torch.Tensor | None = None  # [B_live, H]
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


def pad_id_of(tokenizer: Any, eos: Sequence[int] = ()) -> int:
    """The id sequences are padded with: the tokenizer's pad token, else the first EOS id (``eos``, else the
    tokenizer's), else 0. Padding is always masked, so the choice never changes a result."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if eos:
        return eos[0]
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def stream(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int],
           pad_id: int, batch_size: int | None = None, temperature: float = 0.0,
           seed: int | Sequence[int] | None = None, stop: Callable[[list[int]], str | None] | None = None,
           on_step: Callable[[StepView], None] | None = None, refill: int | None = None,
           longest_first: bool = True, capture_hidden: bool = False) -> Iterator[tuple[int, Completion, float]]:
    """Decode prompts (token ids) with continuous batching; yield ``(index, completion, seconds)`` as rows finish.

    At most ``batch_size`` rows (default: all prompts) are live. Prompts wait in a queue, longest first (the
    long ones do not trail at the end with the batch nearly empty; ``longest_first=False``: in the given order;
    the order never changes a result); whenever at
    least ``refill`` slots are free (default ``batch_size // 8``, at least 1) the next prompts are prefilled
    together and join the batch. A row ends at an EOS id, when ``stop(ids)`` returns a stop string (checked after
    every step), or after ``max_new_tokens``. ``seconds`` is the row's share of the wall time (each forward's
    time split among the rows it served), so the shares add up to the whole. With ``temperature > 0`` prompt
    ``i`` samples from its own generator seeded ``seed + i`` (or ``seed[i]`` for a sequence). ``on_step`` sees
    each step (:class:`StepView`) before its tokens are picked; its own time is no row's share. ``pad_id`` is
    not used by this engine (rows are packed); it stays for other backends with this signature.
    """
    n = len(prompts)
    if n == 0:
        return
    slots = n if batch_size is None else max(1, int(batch_size))
    refill = max(1, slots // 8) if refill is None else max(1, int(refill))
    device = next(model.parameters()).device
    gens = _row_generators(seed, n) if temperature > 0 else None
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    queue = deque(sorted(range(n), key=lambda i: (-len(prompts[i]), i)) if longest_first else range(n))
    dec = CachedDecoder(model, capture_hidden=capture_hidden)
    out: dict[int, list[int]] = {}
    cost: dict[int, float] = {}
    rows: list[int] = []
    logits = fed = hidden = None
    t = 0
    try:
        while queue or rows:
            free = slots - len(rows)
            if queue and free > 0 and (not rows or free >= min(refill, len(queue))):
                take = [queue.popleft() for _ in range(min(free, len(queue)))]
                t0 = time.perf_counter()
                new = dec.admit([prompts[i] for i in take])
                share = (time.perf_counter() - t0) / len(take)
                for i in take:
                    out[i], cost[i] = [], share
                rows = rows + take
                new_fed = torch.full((len(take),), -1, dtype=torch.long, device=device)
                logits = new if logits is None else torch.cat([logits, new])
                fed = new_fed if fed is None else torch.cat([fed, new_fed])
                if capture_hidden:
                    hidden = dec.last_hidden if hidden is None else torch.cat([hidden, dec.last_hidden])
            assert logits is not None
            if on_step is not None:
                on_step(StepView(t, torch.tensor(rows, device=device), logits, fed, hidden))
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
                rows, logits, fed, hidden = [], None, None, None
                dec.reset()
                continue
            if len(live) < len(rows):
                dec.keep(torch.tensor(live))
                rows = [rows[j] for j in live]
                tok = tok[torch.tensor(live, device=tok.device)]
            t0 = time.perf_counter()
            logits, fed = dec.step(tok), tok
            hidden = dec.last_hidden if capture_hidden else None
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


# ---------------------------------------------------------------------------------------------------------------
# Text: stop strings and post-processing


def postprocess_completion(text: str, stop_strings: Sequence[str] = STOP_STRINGS) -> str:
    """Spec section 2: rstrip, strip; cut at the first stop string present and strip again (idempotent)."""
    text = text.rstrip().strip()
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    if cuts:
        text = text[:min(cuts)].strip()
    return text


class StopChecker:
    """``stop(ids) -> matched stop string | None`` for :func:`stream`, checked after every step.

    Cheap: a token can complete a stop string only if its own text holds the string's last character (a per-id
    cached test); only then the row's last few tokens are decoded (as vLLM does, special tokens skipped).
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = STOP_STRINGS):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.window = 2 * max((len(s) for s in self.stop_strings), default=0) + 8
        self._last_chars = {s[-1] for s in self.stop_strings if s}
        self._can_end: dict[int, bool] = {}

    def _could_end(self, tid: int) -> bool:
        hit = self._can_end.get(tid)
        if hit is None:
            text = self.tokenizer.decode([tid], skip_special_tokens=True)
            hit = self._can_end[tid] = any(c in text for c in self._last_chars)
        return hit

    def __call__(self, ids: Sequence[int]) -> str | None:
        if not ids or not self.stop_strings or not self._could_end(ids[-1]):
            return None
        tail = self.tokenizer.decode(list(ids[-self.window:]), skip_special_tokens=True)
        return next((s for s in self.stop_strings if s in tail), None)


@dataclass
class GenOutput:
    """One completion: post-processed ``text``, generated ``ids`` (with a final EOS id), and why it ended."""

    text: str
    ids: list[int]
    finish_reason: str  # eos | stop | length
    seconds: float = 0.0  # this prompt's share of the decoding wall time

    @property
    def new_tokens(self) -> int:
        return len(self.ids)


def batch_slots(lengths: Sequence[int], *, batch_size: int, max_new_tokens: int,
                max_batch_tokens: int | None = None) -> int:
    """Rows decoded together: ``batch_size``, fewer when rows x (longest prompt + ``max_new_tokens``) KV-cache
    tokens would exceed ``max_batch_tokens``; at least one."""
    slots = max(1, int(batch_size))
    if max_batch_tokens is not None and lengths:
        slots = min(slots, max(1, max_batch_tokens // (max(lengths) + max_new_tokens)))
    return slots


def iter_generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                  batch_size: int = 16, max_batch_tokens: int | None = None, temperature: float = 0.0,
                  seed: int | Sequence[int] | None = None, stop_strings: Sequence[str] = STOP_STRINGS,
                  eos_ids: Sequence[int] | None = None, flush_every: int | None = None,
                  refill: int | None = None) -> Iterator[tuple[list[int], list[GenOutput], float]]:
    """Decode prompts (token ids) with continuous batching; yield ``(indices, outputs, seconds)`` as they finish.

    ``indices`` point into ``prompts``; ``outputs[k]`` belongs to ``prompts[indices[k]]``; ``seconds`` is their
    share of the wall time (``outputs[k].seconds`` each). Finished outputs are yielded in groups of
    ``flush_every`` (default: a quarter of the batch), so a caller can grade and save them while decoding goes on.
    Greedy for ``temperature == 0``; with sampling, prompt ``i`` uses seed ``seed + i`` (or ``seed[i]``).
    ``eos_ids`` default: :func:`lightreasoner.prompts.eos_ids` with the stop strings. ``refill`` is passed to
    :func:`stream` (``refill = batch_size`` gives fixed batches).
    """
    eos = list(eos_ids) if eos_ids is not None else find_eos_ids(tokenizer, model, stop_strings)
    eos_set = set(eos)
    stop = StopChecker(tokenizer, stop_strings)
    slots = batch_slots([len(p) for p in prompts], batch_size=batch_size, max_new_tokens=max_new_tokens,
                        max_batch_tokens=max_batch_tokens)
    flush = max(1, slots // 4) if flush_every is None else max(1, flush_every)
    idx: list[int] = []
    outs: list[GenOutput] = []
    for i, c, secs in stream(model, prompts, max_new_tokens=max_new_tokens, eos_ids=eos,
                             pad_id=pad_id_of(tokenizer, eos), batch_size=slots, temperature=temperature,
                             seed=seed, stop=stop, refill=refill):
        body = c.ids[:-1] if c.finish_reason == "eos" and c.ids and c.ids[-1] in eos_set else c.ids
        text = tokenizer.decode(body, skip_special_tokens=True)
        idx.append(i)
        outs.append(GenOutput(postprocess_completion(text, stop_strings), list(c.ids), c.finish_reason, secs))
        if len(idx) >= flush:
            yield idx, outs, sum(o.seconds for o in outs)
            idx, outs = [], []
    if idx:
        yield idx, outs, sum(o.seconds for o in outs)


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], **kw: Any) -> list[GenOutput]:
    """:func:`iter_generate` collected back into the prompts' order."""
    out: list[GenOutput | None] = [None] * len(prompts)
    for idx, outs, _ in iter_generate(model, tokenizer, prompts, **kw):
        for i, o in zip(idx, outs):
            out[i] = o
    return out  # type: ignore[return-value]
