"""Gold-answer perplexity: how much probability a model gives the reference solutions (the report's perplexity
section; the pipeline's perplexity stage calls :func:`gold_perplexity` once per checkpoint)."""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..decoder import left_pad
from ..generation import pad_id_of
from ..prompts import build_prompt_ids
from ..utils import InputError

logger = logging.getLogger(__name__)


def _gold_items(tokenizer: Any, problems: Sequence[Any], system_prompt: str,
                target: str) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, gold ids)`` of each problem that has a ``target`` text."""
    items: list[tuple[list[int], list[int]]] = []
    for p in problems:
        text = getattr(p, target, None)
        if not text:
            continue
        gold = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if gold:
            items.append((build_prompt_ids(tokenizer, p.question, system_prompt), gold))
    if not items:
        raise InputError(f"gold_perplexity: none of the {len(problems)} problems has a {target} text")
    if len(items) < len(problems):
        logger.info("gold_perplexity: %d of %d problems have no %s text and are skipped", len(problems) - len(items),
                    len(problems), target)
    return items


def _batch_nll(model: Any, rows: list[tuple[list[int], list[int]]], pad: int, device: Any) -> list[float]:
    """Each row's summed NLL of its gold tokens, scored in one left-padded forward."""
    ids, mask = left_pad([prompt + gold for prompt, gold in rows], pad, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    m = max(len(g) for _, g in rows)
    # Kept column j is sequence column width - (m + 1) + j; gold token k of a row with n gold tokens sits at
    # column width - n + k and is predicted by the column before it, i.e. kept index m - n + k.
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=m + 1).logits
    out = []
    for r, (_, gold) in enumerate(rows):
        n = len(gold)
        lg = logits[r, m - n:m].float()
        out.append(float(F.cross_entropy(lg, torch.tensor(gold, device=lg.device), reduction="sum")))
    return out


@torch.inference_mode()
def gold_perplexity(model: Any, tokenizer: Any, problems: Sequence[Any], system_prompt: str, *,
                    batch_size: int = 8, target: str = "solution", progress: bool = False) -> tuple[float, float]:
    """Mean per-token NLL of each problem's gold text given its chat prompt, and ``exp`` of it (perplexity).

    ``problems``: objects with ``question`` and ``target`` (``"solution"``: the full reference solution, or
    ``"answer"``: the final answer only, as the authors' ``PPL_analysis.py`` scores it); problems without that text
    are skipped. The prompt is :func:`prompts.build_prompt_ids` (system + user turn + generation prompt) and the
    gold tokens follow it (encoded on their own, no EOS). The mean is pooled over all gold tokens (total NLL /
    tokens), as the authors compute it. Rows are left padded, sorted by length and scored ``batch_size`` at a
    time; only the last ``max gold length + 1`` positions' logits are formed (``[B, m + 1, V]``, scored in float32).
    """
    from tqdm.auto import tqdm

    if target not in ("solution", "answer"):
        raise ValueError(f"target must be 'solution' or 'answer', got {target!r}")
    items = _gold_items(tokenizer, problems, system_prompt, target)
    order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + len(items[i][1])))
    device = next(model.parameters()).device
    pad = pad_id_of(tokenizer)
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    bar = tqdm(total=len(items), desc="gold perplexity", unit="problem", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            rows = [items[i] for i in order[start:start + batch_size]]
            for nll, (_, gold) in zip(_batch_nll(model, rows, pad, device), rows):
                total_nll += nll
                total_tokens += len(gold)
            bar.update(len(rows))
            bar.set_postfix(ppl=f"{math.exp(total_nll / total_tokens):.3f}")
    finally:
        bar.close()
        model.train(was_training)
    mean_nll = total_nll / total_tokens
    return mean_nll, math.exp(mean_nll)
