"""Sampling's text path: a batch's finished trajectories scored against an amateur with another tokenizer.

The design is :mod:`.crosstok`'s page. Here: each trajectory is aligned (:func:`crosstok.align`, or the identity
on the equality fast path), the amateur reads every trajectory's own prompt and text tokens in **one** packed
teacher-forced pass (:func:`decoder.hidden_states`), and chunks of scored steps are reduced by
:func:`contrast.reduce_step` on the expert's logits and the amateur's ``log q_A`` over the expert's vocabulary
(:func:`crosstok.amateur_logq`; on the fast path the amateur's logits gathered into expert order). Skipped steps
are recorded as such (null statistics) in step order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .contrast import reduce_steps
from .crosstok import VocabMap, align, amateur_logq, build_vocab_map, check_piecewise, identity_alignment
from .decoder import hidden_states
from .heads import output_logits
from .invariant import RowInvariant, rowwise
from .utils import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPath:
    """What the text path needs besides the models: both tokenizers, ``M`` and the expert's EOS ids."""

    expert_tokenizer: Any
    amateur_tokenizer: Any
    vmap: VocabMap
    eos: frozenset[int]


def text_path(expert_tokenizer: Any, amateur_tokenizer: Any, *, expert_rows: int, amateur_rows: int,
              expert_eos: Sequence[int], amateur_eos: Sequence[int]) -> TextPath:
    """Build ``M`` once for a tokenizer pair (logs how long it took and what it maps). Raises
    :class:`InputError` for a tokenizer that cannot encode pieces of text (see :func:`crosstok.check_piecewise`)
    and for an amateur tokenizer with ids beyond its model's output rows (the amateur reads what it encodes)."""
    t0 = time.perf_counter()
    top = max(amateur_tokenizer.get_vocab().values(), default=-1)
    if top >= amateur_rows:
        raise InputError(f"the amateur's tokenizer has ids up to {top}, beyond its model's {amateur_rows} output "
                         f"rows (tokens added to the tokenizer but not to the model): the amateur cannot read "
                         f"them; resize its embeddings (model.resize_token_embeddings) or choose another amateur")
    vmap = build_vocab_map(expert_tokenizer, amateur_tokenizer, expert_rows=expert_rows, amateur_rows=amateur_rows,
                           amateur_eos=amateur_eos, expert_eos=expert_eos)
    if not vmap.fast:
        check_piecewise(expert_tokenizer, "expert")
        check_piecewise(amateur_tokenizer, "amateur")
    logger.info("text path: vocabulary map built in %.1fs (%d amateur ids the same token as the expert's, %d "
                "unmapped%s)", time.perf_counter() - t0, vmap.twins, vmap.unmapped,
                "; the tokenizers coincide: equality fast path" if vmap.fast else "")
    return TextPath(expert_tokenizer, amateur_tokenizer, vmap, frozenset(int(i) for i in expert_eos))


def score_text(expert: Any, amateur: Any, amateur_prompts: Sequence[Sequence[int]], trajs: Sequence[Any],
               h_e: torch.Tensor, text: TextPath, params: Any) -> None:
    """Score every step of ``trajs`` (finished; ``.completion`` set) and record it on them (``.add``/``.skip``,
    then ``.alignment`` and ``.dropped``). ``h_e`` ``[B, T, H]``: the expert's final hidden states per step."""
    vmap = text.vmap
    if vmap.fast:
        aligns = [identity_alignment(tr.completion, vmap.gather) for tr in trajs]
    else:
        aligns = [align(tr.completion, text.expert_tokenizer, text.amateur_tokenizer, text.eos) for tr in trajs]
    seqs = [list(p) + al.ids[:al.needed()] for p, al in zip(amateur_prompts, aligns)]
    h_a = torch.cat(hidden_states(amateur, seqs))
    base = [0]  # row of each sequence's last prompt token in the packed states
    for p, s in zip(amateur_prompts, seqs):
        base.append(base[-1] + len(s))
    base = [b + len(p) - 1 for b, p in zip(base, amateur_prompts)]
    device = h_a.device
    first = vmap.first.to(device)
    eos = torch.tensor(sorted(e for e in text.eos if e < vmap.expert_width), dtype=torch.long, device=device)
    pairs = [(i, t) for i, tr in enumerate(trajs) for t in range(len(tr.completion))]
    for c in range(0, len(pairs), params.chunk_steps):
        chunk = pairs[c:c + params.chunk_steps]
        scored = [(i, t) for i, t in chunk if aligns[i].at[t] >= 0]
        red = lists = None
        dropped: list[float] = []
        if scored:
            ri = torch.tensor([i for i, _ in scored], device=h_e.device)
            ti = torch.tensor([t for _, t in scored], device=h_e.device)
            at = torch.tensor([base[i] + aligns[i].at[t] for i, t in scored], device=device)
            with RowInvariant():
                le = output_logits(expert, h_e[ri, ti])[:, :vmap.expert_width]
                la = output_logits(amateur, h_a[at])
            if vmap.fast:
                red = reduce_steps(le, la[:, vmap.gather.to(la.device)], params.alpha, params.contrast)
                dropped = [0.0] * len(scored)
            else:
                targets = torch.tensor([trajs[i].completion[t] for i, t in scored], device=device)
                logq, drop = _logq(la, h_a, amateur, [(base[i] + aligns[i].at[t], aligns[i].paths[t])
                                                     for i, t in scored], first, vmap.expert_width, targets, eos)
                red = reduce_steps(le, logq.to(le.device), params.alpha, params.contrast)
                dropped = drop.tolist()
            lists = (red.kl.tolist(), red.expert_entropy.tolist(), red.amateur_entropy.tolist(),
                     red.top1_agree.tolist())
        j = 0
        for i, t in chunk:
            if aligns[i].at[t] < 0:
                trajs[i].skip()
                continue
            trajs[i].add(t, red, j, params, *lists)
            trajs[i].dropped += dropped[j]
            j += 1
    for tr, al in zip(trajs, aligns):
        tr.alignment = al.codes


def _logq(la: torch.Tensor, h_a: torch.Tensor, amateur: Any, steps: Sequence[tuple[int, tuple[int, ...]]],
          first: torch.Tensor, width: int, targets: torch.Tensor, eos: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``log q_A`` ``[N, width]`` and the dropped mass ``[N]`` of ``N`` scored steps, given the amateur's logits
    ``la`` ``[N, R_A]`` at their boundaries, ``steps`` = (packed row of the boundary, path ``u_1..u_m``) and
    ``eos`` ``[K]`` the expert's EOS ids (the EOS class of :func:`crosstok.amateur_logq`).

    ``log P = sum_i log p_A(u_i | ...)``: ``u_1`` from ``la``, each later ``u_i`` from the amateur's state ``i - 1``
    rows after the boundary (the same pass), all such rows through the output layer at once, added in path order.
    Every row-wise step runs through :func:`.invariant.rowwise`, so a step's numbers never depend on its chunk.
    """
    logp = rowwise(lambda r: torch.log_softmax(r.float(), dim=-1), la)
    n = len(steps)
    path_first = torch.tensor([p[0] if p else -1 for _, p in steps], device=la.device)
    path_logp = torch.zeros(n, device=la.device)
    has = path_first >= 0
    path_logp[has] = logp[torch.arange(n, device=la.device)[has], path_first[has]]
    extra = [(j, row + k, u, k) for j, (row, p) in enumerate(steps) for k, u in enumerate(p) if k >= 1]
    if extra:
        rows = torch.tensor([r for _, r, _, _ in extra], device=la.device)
        toks = torch.tensor([[u] for _, _, u, _ in extra], device=la.device)
        with RowInvariant():
            lp = rowwise(lambda h, t: torch.log_softmax(output_logits(amateur, h).float(), dim=-1)
                         .gather(1, t)[:, 0], h_a[rows], toks)
        for k in range(1, max(k for *_, k in extra) + 1):  # each path's k-th token: at most one per step
            at = [x for x, e in enumerate(extra) if e[3] == k]
            path_logp[torch.tensor([extra[x][0] for x in at], device=la.device)] += lp[at]
    return rowwise(lambda lp_, t, pf, pl: amateur_logq(lp_, first, width, t, pf, pl, eos),
                   logp, targets, path_first, path_logp)
