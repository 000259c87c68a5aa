"""Sampling's core: the expert writes a reasoning prefix; every step is scored against the amateur.

For each problem the expert greedily writes up to ``max_new_tokens`` tokens, through the one decoding loop
(:func:`lightreasoner.generation.stream`, all prompts of a batch decoded together, in their order). At every step
``t`` both models' next-token distributions on the same token ids are reduced at once (see :mod:`.contrast`) to
the step's KL, entropies, top tokens and, for kept steps (``KL >= beta``), the sparse contrastive soft label.
Full-vocabulary distributions never outlive their step (lockstep) or their chunk of steps (teacher-forced).

Two ways to score with the amateur (``amateur_pass``), both exact (on the id path: both models share one
tokenizer; an amateur with another tokenizer takes the text path, :mod:`.textpath`, teacher-forced only):

- ``lockstep``: a per-step hook of the loop (:class:`_Lockstep`) keeps the amateur's own KV cache, feeds it each
  token the expert was fed, and scores the step;
- ``teacher-forced``: the loop hands the hook the expert's final hidden states (``[B, H]`` per step, small); then
  the amateur reads every finished trajectory in one forward pass, and both output layers are applied to chunks
  of steps (:func:`_score_teacher_forced`).

:func:`to_record` is a problem's record in the samples file; :func:`reference_records` the authors' per-step
format; :func:`format_step` one kept step as ``lightreasoner inspect`` prints it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .contrast import StepReduction, reduce_steps
from .crosstok import CODES
from .decoder import CachedDecoder, hidden_states
from .heads import output_logits
from .invariant import RowInvariant
from .generation import StepView, stream
from .problems import Problem
from .textpath import TextPath, score_text
from .utils import Stopwatch


@dataclass(frozen=True)
class ScoringParams:
    """How a batch is sampled and scored (``SampleConfig`` has these fields)."""

    alpha: float = 0.2
    beta: float = 0.4
    selection: bool = True
    contrast: bool = True
    include_first_step: bool = False
    max_new_tokens: int = 128
    amateur_pass: str = "teacher-forced"
    chunk_steps: int = 128  # (row, step) pairs reduced at once in teacher-forced mode

    @classmethod
    def from_config(cls, cfg: Any) -> "ScoringParams":
        """The parameters of a ``SampleConfig`` (or any object with its fields)."""
        return cls(cfg.alpha, cfg.beta, cfg.selection, cfg.contrast, cfg.include_first_step, cfg.max_new_tokens,
                   cfg.amateur_pass)


class _Trajectory:
    """Per-problem accumulator of a batch."""

    __slots__ = ("completion", "kl", "ent_e", "ent_a", "agree", "steps", "done", "alignment", "dropped")

    def __init__(self) -> None:
        self.completion: list[int] = []
        self.kl: list[float | None] = []
        self.ent_e: list[float | None] = []
        self.ent_a: list[float | None] = []
        self.agree: list[bool | None] = []
        self.steps: list[dict] = []
        self.done = False
        self.alignment: str | None = None  # text path: one code per step (crosstok.CODES)
        self.dropped = 0.0  # text path: amateur mass dropped (unmapped ids), summed over scored steps

    def skip(self) -> None:
        """Record the next step as not scored (text path: no amateur boundary there)."""
        for values in (self.kl, self.ent_e, self.ent_a, self.agree):
            values.append(None)

    def add(self, t: int, red: StepReduction, i: int, params: ScoringParams, kl_row: list, ent_e: list,
            ent_a: list, agree: list) -> None:
        """Record step ``t`` from row ``i`` of a reduction (lists are the reduction's ``.tolist()``s)."""
        kl = kl_row[i]
        self.kl.append(round(kl, 6))
        self.ent_e.append(round(ent_e[i], 6))
        self.ent_a.append(round(ent_a[i], 6))
        self.agree.append(bool(agree[i]))
        if (t > 0 or params.include_first_step) and (not params.selection or kl >= params.beta):
            ids = red.label_ids[i]
            n = int((ids >= 0).sum())
            self.steps.append({
                "pos": t, "kl": round(kl, 6), "token_ids": ids[:n].tolist(),
                "weights": [round(w, 6) for w in red.label_weights[i, :n].tolist()],
                "expert_top": [[a, round(b, 6)] for a, b in zip(red.expert_top_ids[i].tolist(),
                                                              red.expert_top_probs[i].tolist())],
                "amateur_top": [[a, round(b, 6)] for a, b in zip(red.amateur_top_ids[i].tolist(),
                                                               red.amateur_top_probs[i].tolist())],
            })


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Lockstep:
    """Per-step hook: the amateur follows the expert on its own KV cache and each step is scored at once.

    The amateur is prefilled with the same prompts at the first step; at every later step it drops
    the rows the expert dropped and is fed the tokens the expert was fed (``view.fed``).
    """

    def __init__(self, amateur: Any, prompts: Sequence[Sequence[int]], vocab_size: int, params: ScoringParams,
                 trajs: list[_Trajectory], timer: Stopwatch):
        self.dec = CachedDecoder(amateur)
        self.prompts, self.vocab_size, self.params = prompts, vocab_size, params
        self.trajs, self.timer = trajs, timer
        self.rows: list[int] | None = None

    def __call__(self, view: StepView) -> None:
        _sync(view.logits.device)  # the expert's step so far is generation time
        with self.timer("scoring"):
            rows = view.rows.tolist()
            if self.rows is None:
                assert view.fed is not None and bool((view.fed < 0).all()), "lockstep needs one admission"
                logits_a = self.dec.prefill([self.prompts[r] for r in rows])
            else:
                where = {r: j for j, r in enumerate(self.rows)}
                self.dec.keep(torch.tensor([where[r] for r in rows], device=self.dec.device))
                logits_a = self.dec.step(view.fed)
            self.rows = rows
            v = self.vocab_size
            red = reduce_steps(view.logits[:, :v], logits_a[:, :v], self.params.alpha, self.params.contrast)
            lists = (red.kl.tolist(), red.expert_entropy.tolist(), red.amateur_entropy.tolist(),
                     red.top1_agree.tolist())
            for i, r in enumerate(rows):
                self.trajs[r].add(view.t, red, i, self.params, *lists)

    def close(self) -> None:
        self.dec.close()  # removes its hook from the amateur's output layer


@torch.inference_mode()
def sample_batch(expert: Any, amateur: Any, prompts: Sequence[Sequence[int]], eos_ids: Sequence[int], pad_id: int,
                 vocab_size: int, params: ScoringParams, timer: Stopwatch | None = None, *,
                 text: TextPath | None = None, amateur_prompts: Sequence[Sequence[int]] | None = None
                 ) -> list[_Trajectory]:
    """Generate greedily with the expert and score every step against the amateur, for one batch.

    ``vocab_size``: the common logit width both models are compared on (see :func:`models.check_vocab`; unused on
    the text path). ``text``: score on the text path (:mod:`.textpath`), the amateur reading ``amateur_prompts``
    (its own chat template; default ``prompts``). Returns one :class:`_Trajectory` per prompt, in order.
    ``timer`` gets ``generation`` and ``scoring`` seconds.
    """
    if text is not None and params.amateur_pass == "lockstep":
        raise ValueError("the text path scores teacher-forced only (amateur_pass='lockstep' given)")
    timer = timer or Stopwatch()
    device = next(expert.parameters()).device
    lockstep = params.amateur_pass == "lockstep"
    trajs = [_Trajectory() for _ in prompts]
    hidden: list[torch.Tensor] = []  # teacher-forced: per step, [B_live, H] with the live rows of that step
    live_rows: list[torch.Tensor] = []

    def keep_hidden(view: StepView) -> None:
        hidden.append(view.hidden)  # type: ignore[arg-type]
        live_rows.append(view.rows)

    hook = _Lockstep(amateur, prompts, vocab_size, params, trajs, timer) if lockstep else None
    t0, scoring0 = time.perf_counter(), timer.totals.get("scoring", 0.0)
    try:
        for i, comp, _ in stream(expert, prompts, max_new_tokens=params.max_new_tokens, eos_ids=eos_ids,
                                 pad_id=pad_id, on_step=hook or keep_hidden, longest_first=False,
                                 capture_hidden=not lockstep):
            trajs[i].completion = comp.ids
        _sync(device)
    finally:
        if hook is not None:
            hook.close()
    generation = time.perf_counter() - t0 - (timer.totals.get("scoring", 0.0) - scoring0)
    timer.totals["generation"] = timer.totals.get("generation", 0.0) + generation
    if not lockstep:
        with timer("scoring"):
            h_e = _expert_states(hidden, live_rows, len(prompts))
            if text is not None:
                score_text(expert, amateur, amateur_prompts or prompts, trajs, h_e, text, params)
            else:
                _score_teacher_forced(expert, amateur, prompts, trajs, h_e, vocab_size, params)
    return trajs


def _expert_states(hidden: list[torch.Tensor], live_rows: list[torch.Tensor], batch: int) -> torch.Tensor:
    """The expert's final hidden states ``[B, T, H]`` from the per-step ``[B_live, H]`` of the live rows."""
    h_e = hidden[0].new_zeros((batch, len(hidden), hidden[0].shape[-1]))
    for t, (h, r) in enumerate(zip(hidden, live_rows)):
        h_e[r, t] = h
    return h_e


def _score_teacher_forced(expert: Any, amateur: Any, prompts: Sequence[Sequence[int]], trajs: list[_Trajectory],
                          h_e: torch.Tensor, vocab_size: int, params: ScoringParams) -> None:
    """One amateur pass over the finished trajectories, then both output layers on chunks of steps."""
    device = next(amateur.parameters()).device
    # The amateur reads each prompt + completion[:-1] on its own (packed, batch-invariant); step t of row i is
    # predicted at position len(prompt_i) - 1 + t of its sequence, row start[i] + that of the packed states.
    seqs = [list(p) + tr.completion[:-1] for p, tr in zip(prompts, trajs)]
    h_a = torch.cat(hidden_states(amateur, seqs))
    start = [0]
    for s in seqs[:-1]:
        start.append(start[-1] + len(s))
    pairs = [(i, t) for i, tr in enumerate(trajs) for t in range(len(tr.completion))]
    for c in range(0, len(pairs), params.chunk_steps):
        chunk = pairs[c:c + params.chunk_steps]
        ri = torch.tensor([i for i, _ in chunk], device=device)
        ti = torch.tensor([t for _, t in chunk], device=device)
        at = torch.tensor([start[i] + len(prompts[i]) - 1 + t for i, t in chunk], device=device)
        with RowInvariant():
            le = output_logits(expert, h_e[ri, ti])[:, :vocab_size]
            la = output_logits(amateur, h_a[at])[:, :vocab_size]
        red = reduce_steps(le, la, params.alpha, params.contrast)
        lists = (red.kl.tolist(), red.expert_entropy.tolist(), red.amateur_entropy.tolist(),
                 red.top1_agree.tolist())
        for j, (i, t) in enumerate(chunk):
            trajs[i].add(t, red, j, params, *lists)


def to_record(problem: Problem, prompt_ids: Sequence[int], tr: _Trajectory) -> dict:
    """A problem's record in the samples file. On the text path also ``alignment`` (one code per step,
    :data:`crosstok.CODES`; skipped steps have null statistics) and ``dropped_mass`` (the amateur's unmapped
    mass, summed over the scored steps)."""
    rec = {"id": problem.id, "question": problem.question, "prompt_ids": list(prompt_ids),
           "completion_ids": tr.completion, "kl": tr.kl, "expert_entropy": tr.ent_e, "amateur_entropy": tr.ent_a,
           "top1_agree": tr.agree, "steps": tr.steps}
    if tr.alignment is not None:
        rec.update(alignment=tr.alignment, dropped_mass=round(tr.dropped, 6))
    return rec


def reference_records(records: Sequence[dict], tokenizer: Any) -> list[dict]:
    """The authors' per-step format: one line per kept step, the prefix as text."""
    out = []
    for r in records:
        comp = r["completion_ids"]
        for s in r["steps"]:
            out.append({"prompt_id": r["question"], "step": s["pos"],
                        "prefix": tokenizer.decode(comp[:s["pos"]], skip_special_tokens=False),
                        "tokens": tokenizer.convert_ids_to_tokens(s["token_ids"]), "token_ids": s["token_ids"],
                        "weights": s["weights"], "kl_divergence": s["kl"]})
    return out


def format_step(record: dict, step: dict, tokenizer: Any, context: int = 12) -> str:
    comp = record["completion_ids"]
    prefix = tokenizer.decode(comp[max(0, step["pos"] - context):step["pos"]])

    def toks(pairs: Sequence[Sequence[float]]) -> str:
        return "  ".join(f"{tokenizer.decode([int(i)])!r} {p:.3f}" for i, p in pairs)

    label = list(zip(step["token_ids"], step["weights"]))
    how = f" ({CODES[record['alignment'][step['pos']]]})" if record.get("alignment") else ""
    return (f"[{record['id']} step {step['pos']}] KL {step['kl']:.3f}{how}\n"
            f"  ...{prefix!r}\n"
            f"  expert : {toks(step['expert_top'])}\n"
            f"  amateur: {toks(step['amateur_top'])}\n"
            f"  label  : {toks(label)}")
