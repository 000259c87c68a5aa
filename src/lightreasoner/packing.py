"""The update plan and the packed soft-label loss: which kept steps go into which update, and one forward pass
per trajectory that reads logits only where a step is kept.

1. **Plan** (:func:`plan_updates`). Each epoch shuffles the trajectories (seeded); their kept steps form one
   stream that is cut into updates of exactly ``steps_per_update`` kept steps. A trajectory whose steps straddle
   two updates is split there into :class:`Piece` objects (each forwarded only up to its own last kept step). The
   loss of an update is the mean over its kept steps. The plan is a pure function of the data and the settings,
   which is what makes resuming and multi-process runs exact.
2. **Shards and micro-batches** (:func:`shard_pieces`, :func:`micro_batches`). An update's kept steps are split
   into contiguous, near-equal shares per process, and each share into forwards of a bounded padded size.
3. **Packed loss** (:func:`collate`, :func:`packed_loss`). Rows are right padded (positions are absolute indices,
   so padding never moves a supervised position; the causal mask makes the pass exact for every kept step). Only
   the final hidden states at kept positions go through the output layer (:func:`kept_logits`): ``[batch, length,
   vocab]`` logits are never formed. The loss per step is ``KL(w || softmax(logits))`` over the full vocabulary in
   float32 (:func:`contrast.soft_label_kl_loss`). ``tests/test_train.py`` holds it to one right-padded forward per
   kept step with dense labels (the authors' formulation).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .contrast import soft_label_kl_loss
from .heads import output_logits
from .trajectories import Trajectory


@dataclass(frozen=True, order=True)
class Piece:
    """Kept steps ``[start, stop)`` of trajectory ``traj`` (indices into its sorted ``positions``)."""

    traj: int
    start: int
    stop: int

    @property
    def n_steps(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Update:
    index: int  # 0-based
    epoch: int
    pieces: tuple[Piece, ...]

    @property
    def n_steps(self) -> int:
        return sum(p.n_steps for p in self.pieces)


def plan_updates(step_counts: Sequence[int], steps_per_update: int, *, max_steps: int | None = None,
                 epochs: float | None = None, seed: int = 42) -> list[Update]:
    """Cut the shuffled stream of kept steps into updates of ``steps_per_update`` steps.

    Epoch ``e`` visits the trajectories in ``randperm(seed + e)`` order, each trajectory's steps in position order;
    the stream runs on across epochs. ``epochs`` (if set) bounds the stream to ``epochs * total`` steps (the last
    update may be short); otherwise ``max_steps`` full updates are made.
    """
    total = sum(step_counts)
    if total == 0:
        return []
    budget = round(epochs * total) if epochs is not None else max_steps * steps_per_update
    updates: list[Update] = []
    cur: list[Piece] = []
    need, consumed, epoch, cur_epoch = steps_per_update, 0, 0, 0
    while consumed < budget:
        order = torch.randperm(len(step_counts), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for t in order:
            start = 0
            while start < step_counts[t] and consumed < budget:
                if not cur:
                    cur_epoch = epoch
                take = min(need, step_counts[t] - start, budget - consumed)
                cur.append(Piece(t, start, start + take))
                start, need, consumed = start + take, need - take, consumed + take
                if need == 0:
                    updates.append(Update(len(updates), cur_epoch, tuple(cur)))
                    cur, need = [], steps_per_update
            if consumed >= budget:
                break
        epoch += 1
    if cur:
        updates.append(Update(len(updates), cur_epoch, tuple(cur)))
    return updates


def shard_pieces(pieces: Sequence[Piece], world_size: int, rank: int) -> list[Piece]:
    """Rank ``rank``'s contiguous share of an update's kept steps (sizes differ by at most one)."""
    n = sum(p.n_steps for p in pieces)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    out, offset = [], 0
    for p in pieces:
        a, b = max(lo, offset), min(hi, offset + p.n_steps)
        if a < b:
            out.append(Piece(p.traj, p.start + a - offset, p.start + b - offset))
        offset += p.n_steps
    return out


def piece_length(traj: Trajectory, piece: Piece) -> int:
    """Tokens a piece needs: its trajectory up to (and including) its last kept position."""
    return traj.positions[piece.stop - 1] + 1


def micro_batches(trajs: Sequence[Trajectory], pieces: Sequence[Piece], max_tokens: int) -> list[list[Piece]]:
    """Group pieces (longest first) into forwards of at most ``max_tokens`` padded tokens (one piece may exceed
    it alone)."""
    order = sorted(pieces, key=lambda p: -piece_length(trajs[p.traj], p))
    out: list[list[Piece]] = []
    for p in order:
        if out and (len(out[-1]) + 1) * piece_length(trajs[out[-1][0].traj], out[-1][0]) <= max_tokens:
            out[-1].append(p)
        else:
            out.append([p])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Packed batches and the loss
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """Right-padded rows and the kept steps on them.

    ``input_ids`` ``[B, L]``; ``keep`` ``[B, L]`` bool, True at kept positions (``N`` in all); ``label_ids``
    ``[N, K]`` (-1 padded) and ``label_weights`` ``[N, K]`` in row-major order of ``keep``; ``n_tokens`` real
    (non-pad) tokens.
    """

    input_ids: torch.Tensor
    keep: torch.Tensor
    label_ids: torch.Tensor
    label_weights: torch.Tensor
    n_tokens: int

    @property
    def n_steps(self) -> int:
        return int(self.label_ids.shape[0])

    def to(self, device: Any) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.keep.to(device), self.label_ids.to(device),
                           self.label_weights.to(device), self.n_tokens)


def collate(trajs: Sequence[Trajectory], pieces: Sequence[Piece], pad_id: int) -> PackedBatch:
    """Pieces -> one right-padded :class:`PackedBatch` (each row cut after its last kept position)."""
    lengths = [piece_length(trajs[p.traj], p) for p in pieces]
    width = max(lengths)
    k = max(len(trajs[p.traj].label_ids[s]) for p in pieces for s in range(p.start, p.stop))
    n = sum(p.n_steps for p in pieces)
    input_ids = torch.full((len(pieces), width), pad_id, dtype=torch.long)
    keep = torch.zeros((len(pieces), width), dtype=torch.bool)
    label_ids = torch.full((n, k), -1, dtype=torch.long)
    label_weights = torch.zeros((n, k), dtype=torch.float32)
    j = 0
    for row, (p, length) in enumerate(zip(pieces, lengths)):
        t = trajs[p.traj]
        input_ids[row, :length] = torch.tensor(t.input_ids[:length], dtype=torch.long)
        keep[row, t.positions[p.start:p.stop]] = True
        for s in range(p.start, p.stop):
            label_ids[j, :len(t.label_ids[s])] = torch.tensor(t.label_ids[s], dtype=torch.long)
            label_weights[j, :len(t.label_weights[s])] = torch.tensor(t.label_weights[s], dtype=torch.float32)
            j += 1
    return PackedBatch(input_ids, keep, label_ids, label_weights, sum(lengths))


def empty_batch(pad_id: int) -> PackedBatch:
    """A one-token batch whose loss is 0 (with zero gradients): keeps an idle rank in step with the others."""
    return PackedBatch(torch.tensor([[pad_id]]), torch.tensor([[True]]), torch.tensor([[-1]]),
                       torch.zeros((1, 1)), 0)


@functools.lru_cache(maxsize=None)
def _bool_logits_to_keep_supported() -> bool:
    """Whether this transformers accepts a boolean ``[B, L]`` mask as ``logits_to_keep`` (checked once)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return False
    try:
        return tuple(slice_logits_to_keep(torch.zeros(1, 3, 2), torch.tensor([[False, True, True]])).shape) == (2, 2)
    except Exception:
        return False


def _base_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers are injected in place, so it runs them)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def kept_logits(model: nn.Module, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, V]`` at the True positions of ``keep`` ``[B, L]`` (row-major), never forming ``[B, L, V]``.

    Uses ``logits_to_keep=<bool mask>`` where the installed transformers supports it and the model's forward
    slices through it (so model-specific output scaling stays), else the decoder's hidden states gathered at kept
    positions through :func:`heads.output_logits` (the output layer and the family's scaling). No attention mask
    is passed: rows are right padded, so under the causal mask no real token sees a pad.
    """
    lm = _base_lm(model)
    if _BOOL_KEEP and _slices_by_mask(type(lm)) and _bool_logits_to_keep_supported():
        return lm(input_ids=input_ids, logits_to_keep=keep, use_cache=False).logits
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    return output_logits(lm, hidden[keep])


_BOOL_KEEP = True  # tests switch the fallback path on by setting this to False


@functools.lru_cache(maxsize=None)
def _slices_by_mask(cls: type) -> bool:
    """Whether ``cls.forward`` takes ``logits_to_keep`` and slices with transformers' ``slice_logits_to_keep``
    (which takes a mask); a few models and older remote code slice ``[-logits_to_keep:]`` themselves."""
    if "logits_to_keep" not in inspect.signature(cls.forward).parameters:
        return False
    try:
        return "slice_logits_to_keep" in inspect.getsource(cls.forward)
    except (OSError, TypeError):  # no source to read: take the path that needs nothing of the forward
        return False


class KeptLogitsLM(nn.Module):
    """A causal LM whose forward returns logits only at kept positions; the unit accelerate wraps (DDP/FSDP/
    DeepSpeed), so the whole computation runs inside the wrapper's forward."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        # FSDP's transformer auto-wrap policy reads the layer classes from here.
        self._no_split_modules = getattr(_base_lm(lm), "_no_split_modules", None)

    def forward(self, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return kept_logits(self.lm, input_ids, keep)


def attention_backends(device: torch.device | str) -> contextlib.AbstractContextManager:
    """On CUDA, run scaled-dot-product attention on the flash / memory-efficient kernels, not cuDNN's.

    Packed batches rarely repeat a ``(rows, length)`` shape. On an H200 (torch 2.11) a profile showed each new
    shape costing ~30-50 ms in SDPA's forward and backward, the signature of cuDNN attention building a plan per
    shape; the flash and memory-efficient kernels take any shape. Elsewhere this does nothing.
    """
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def packed_loss(model: nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, int]:
    """``(sum over the batch's kept steps of KL(w || p_model), number of kept steps)``; divide for the mean.

    ``model``: a causal LM, or a :class:`KeptLogitsLM` (possibly wrapped by DDP/FSDP/DeepSpeed).
    """
    inner = getattr(model, "module", model)
    if isinstance(inner, KeptLogitsLM):
        logits = model(batch.input_ids, batch.keep)
    else:
        logits = kept_logits(model, batch.input_ids, batch.keep)
    return soft_label_kl_loss(logits, batch.label_ids, batch.label_weights, reduction="sum"), batch.n_steps
