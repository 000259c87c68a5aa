"""The method's math as pure tensor functions.

Paper symbols (Wang et al., LightReasoner, arXiv 2510.07962) and their names here:

- ``p_E``, ``p_A``: the expert's and the amateur's next-token distributions at one step
  -> ``logp_expert``, ``logp_amateur`` (log-softmax over the full vocabulary, float32).
- ``D_KL(p_E || p_A)``: the step's expert-amateur divergence -> :func:`expert_amateur_kl`.
- ``beta``: the selection threshold; a step is *kept* when its KL >= beta -> ``beta``.
- ``V_t = {a : p_E(a) >= alpha * max_b p_E(b)}``: the plausible set -> :func:`plausible_mask`, ``alpha``.
- ``v_C = softmax_{V_t}(log p_E - log p_A)``: the contrastive soft label -> :func:`contrastive_label`.
- Training objective ``D_KL(v_C || p_theta)`` at kept steps -> :func:`soft_label_kl_loss`.

Shapes: ``N`` steps (rows), ``V`` vocabulary, ``K`` the widest sparse label in a batch.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .invariant import by_row_tiles

logger = logging.getLogger(__name__)
EPS = 1e-12  # added to both distributions inside the KL's log, as the authors do


def expert_amateur_kl(logp_expert: torch.Tensor, logp_amateur: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``KL(p_E || p_A) = sum_v p_E(v) log((p_E(v) + eps) / (p_A(v) + eps))``.

    Args: log-probabilities ``[N, V]`` (float32). Returns ``[N]``, >= 0 up to rounding.
    """
    pe, pa = logp_expert.exp(), logp_amateur.exp()
    return (pe * (torch.log(pe + eps) - torch.log(pa + eps))).sum(-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each row of log-probabilities ``[N, V]`` -> ``[N]``."""
    return -(logp.exp() * logp).sum(-1)


def plausible_mask(logp_expert: torch.Tensor, alpha: float) -> torch.Tensor:
    """``V_t``: tokens with ``p_E(v) >= alpha * max p_E``. ``[N, V]`` -> bool ``[N, V]`` (never empty)."""
    return logp_expert >= logp_expert.max(-1, keepdim=True).values + torch.log(torch.tensor(alpha))


def contrastive_label(logp_expert: torch.Tensor, logp_amateur: torch.Tensor, mask: torch.Tensor,
                      contrast: bool = True) -> torch.Tensor:
    """``v_C = softmax over V_t of (log p_E - log p_A)``; zero outside ``V_t``. ``[N, V]`` -> ``[N, V]``.

    With ``contrast=False`` (the paper's ablation) the label is ``p_E`` renormalised on ``V_t``.
    """
    score = logp_expert - logp_amateur if contrast else logp_expert
    return torch.softmax(score.masked_fill(~mask, float("-inf")), dim=-1)


def _dense_stats(logits_expert: torch.Tensor, logits_amateur: torch.Tensor, eps: float = EPS):
    """KL, both entropies and both log-distributions from raw logits ``[N, V]`` (float32 inside)."""
    le = torch.log_softmax(logits_expert, dim=-1, dtype=torch.float32)
    la = torch.log_softmax(logits_amateur, dim=-1, dtype=torch.float32)
    pe, pa = le.exp(), la.exp()
    kl = (pe * torch.log((pe + eps) / (pa + eps))).sum(-1)
    return kl, -(pe * le).sum(-1), -(pa * la).sum(-1), le, la


COMPILE_MIN_VOCAB = 32768  # below this the eager kernels are fast enough and compiling is not worth its start-up
_compiled: dict[str, object] = {}


def dense_stats(logits_expert: torch.Tensor, logits_amateur: torch.Tensor, eps: float = EPS):
    """:func:`_dense_stats`, fused by ``torch.compile`` for real vocabularies (about 4x faster on CPU, where
    the eager version makes a dozen passes over memory). ``LIGHTREASONER_COMPILE=0`` turns it off; if compiling
    fails, the eager version is used with a warning."""
    if logits_expert.shape[-1] < COMPILE_MIN_VOCAB or os.environ.get("LIGHTREASONER_COMPILE", "1") == "0":
        return _dense_stats(logits_expert, logits_amateur, eps)
    fn = _compiled.get("fn")
    if fn is None:
        fn = _compiled["fn"] = torch.compile(_dense_stats, dynamic=True)
    if fn is not _dense_stats:
        try:
            return fn(logits_expert, logits_amateur, eps)
        except Exception as e:  # no compiler toolchain, unsupported backend, ...
            logger.warning("torch.compile of the step statistics failed (%s: %s); using eager kernels",
                           type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            _compiled["fn"] = _dense_stats
    return _dense_stats(logits_expert, logits_amateur, eps)


@dataclass
class StepReduction:
    """Everything a sampled step keeps once both full distributions are gone (all first dim ``N``)."""

    kl: torch.Tensor  # [N] float
    expert_entropy: torch.Tensor  # [N]
    amateur_entropy: torch.Tensor  # [N]
    top1_agree: torch.Tensor  # [N] bool
    label_ids: torch.Tensor  # [N, K] long, -1 padded
    label_weights: torch.Tensor  # [N, K] float, 0 padded, rows sum to 1
    expert_top_ids: torch.Tensor  # [N, top]
    expert_top_probs: torch.Tensor  # [N, top]
    amateur_top_ids: torch.Tensor  # [N, top]
    amateur_top_probs: torch.Tensor  # [N, top]


def top_k(x: torch.Tensor, k: int, spare: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k)`` over the last dimension of ``x [N, V]``, ties in increasing index (``topk``'s own order of
    equal values follows the call's shape; in bf16 equal logits are common). Takes ``k + spare`` and sorts them; a
    row whose tie group reaches past them makes the call sort the whole rows."""
    k = min(k, x.shape[-1])
    wide = min(k + spare, x.shape[-1])
    vals, ids = x.topk(wide, dim=-1)
    if wide > k and bool((vals[:, k - 1] == vals[:, wide - 1]).any()):
        vals, ids = x.sort(dim=-1, descending=True, stable=True)
        return vals[:, :k], ids[:, :k]
    ids, by_id = ids.sort(dim=-1)
    vals, by_value = vals.gather(-1, by_id).sort(dim=-1, descending=True, stable=True)
    return vals[:, :k], ids.gather(-1, by_value)[:, :k]


def reduce_step(logits_expert: torch.Tensor, logits_amateur: torch.Tensor, alpha: float, contrast: bool = True,
                top: int = 5, eps: float = EPS) -> StepReduction:
    """Reduce the two models' raw logits at ``N`` steps to KL, entropies and a sparse soft label.

    ``logits_*``: ``[N, V]`` over the same vocabulary (any dtype; computed in float32). Labels are returned for
    every row; selection by ``beta`` is the caller's. The sparse label lists ``V_t`` in decreasing weight.

    Equal to :func:`expert_amateur_kl`, :func:`entropy`, :func:`plausible_mask` and :func:`contrastive_label`
    composed, but cheaper: the full-vocabulary statistics are fused (:func:`dense_stats`), and since ``V_t`` is
    by definition a top-k set of ``p_E``, the label is computed on the ``k`` gathered tokens only.
    """
    kl, ent_e, ent_a, le, la = dense_stats(logits_expert, logits_amateur, eps)
    k = min(max(top, 16), le.shape[-1])
    top_le, top_ids = top_k(le, k)  # sorted by p_E, descending
    thresh = top_le[:, :1] + math.log(alpha)
    if bool((top_le[:, -1:] >= thresh).any()) and k < le.shape[-1]:  # a plausible set wider than k: rare
        k = int((le >= thresh).sum(-1).max())
        top_le, top_ids = top_k(le, max(k, top))
    in_set = top_le >= thresh
    score = top_le - la.gather(1, top_ids) if contrast else top_le
    w = torch.softmax(score.masked_fill(~in_set, float("-inf")), dim=-1)
    w, order = w.sort(dim=-1, descending=True, stable=True)
    ids = top_ids.gather(1, order)
    valid = in_set.gather(1, order)
    n = int(in_set.sum(-1).max())
    tpa, tia = top_k(la, top)
    return StepReduction(kl=kl, expert_entropy=ent_e, amateur_entropy=ent_a, top1_agree=top_ids[:, 0] == tia[:, 0],
                         label_ids=ids[:, :n].masked_fill(~valid[:, :n], -1),
                         label_weights=w[:, :n].masked_fill(~valid[:, :n], 0.0),
                         expert_top_ids=top_ids[:, :top], expert_top_probs=top_le[:, :top].exp(),
                         amateur_top_ids=tia, amateur_top_probs=tpa.exp())


def reduce_steps(logits_expert: torch.Tensor, logits_amateur: torch.Tensor, alpha: float,
                 contrast: bool = True) -> StepReduction:
    """:func:`reduce_step` with each row's numbers independent of the rows beside it on any device: where the
    device's reductions follow the row count (CUDA), in calls of a fixed row count (:func:`.invariant.by_row_tiles`),
    stacked with the labels padded to the widest (``-1`` / ``0``)."""
    parts = by_row_tiles(lambda e, a: reduce_step(e, a, alpha, contrast), logits_expert, logits_amateur)
    if len(parts) == 1 and parts[0][0] == logits_expert.shape[0]:
        return parts[0][1]
    width = max(r.label_ids.shape[1] for _, r in parts)
    stacked = {}
    for f in fields(StepReduction):
        xs = [getattr(r, f.name)[:n] for n, r in parts]
        if f.name in ("label_ids", "label_weights"):
            xs = [F.pad(x, (0, width - x.shape[1]), value=-1 if f.name == "label_ids" else 0.0) for x in xs]
        stacked[f.name] = torch.cat(xs)
    return StepReduction(**stacked)


def soft_label_kl_loss(logits: torch.Tensor, label_ids: torch.Tensor, label_weights: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """``KL(w || p) = sum_k w_k (log w_k - log p(ids_k))`` with ``p = softmax(logits)`` over the full vocabulary.

    ``logits``: ``[N, V]`` at the kept positions (any dtype; float32 inside). ``label_ids`` ``[N, K]`` long
    (``-1`` = padding) and ``label_weights`` ``[N, K]`` (0 on padding, rows summing to 1). Returns the mean over
    rows (``reduction='mean'``), their sum (``'sum'``) or the ``[N]`` vector (``'none'``). Padding and zero
    weights contribute nothing, and nothing is dropped from the softmax: special tokens stay in ``p``.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    valid = label_ids >= 0
    logp_at = torch.gather(logp, 1, label_ids.clamp(min=0))
    w = label_weights.float() * valid
    per_row = (torch.xlogy(w, w) - w * logp_at).sum(-1)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()


def dense_label(label_ids: torch.Tensor, label_weights: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Scatter sparse labels ``[N, K]`` into dense ``[N, V]`` rows (the authors' format; for tests/benchmarks)."""
    out = torch.zeros(label_ids.shape[0], vocab_size, dtype=torch.float32)
    valid = label_ids >= 0
    out.scatter_add_(1, label_ids.clamp(min=0), label_weights.float() * valid)
    return out


def dense_kl_loss(logits: torch.Tensor, dense_weights: torch.Tensor) -> torch.Tensor:
    """The authors' loss on dense labels ``[N, V]``: ``KL(w || softmax(logits))`` averaged over rows."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return F.kl_div(logp, dense_weights, reduction="batchmean")
