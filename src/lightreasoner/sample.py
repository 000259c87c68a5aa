"""Stage 1, sampling: the expert writes reasoning prefixes; steps where the amateur departs become soft labels.

For each problem the expert greedily writes up to ``max_new_tokens`` tokens. At every step ``t`` both models'
next-token distributions on the same token ids are reduced at once (see :mod:`.contrast`) to the step's KL,
entropies, top tokens and, for kept steps (``KL >= beta``), the sparse contrastive soft label. Full-vocabulary
distributions never outlive their step (lockstep) or their chunk of steps (teacher-forced).

Two ways to score with the amateur (``--amateur-pass``), both exact:

- ``lockstep``: the amateur keeps its own KV cache and consumes each token the expert emits, in step;
- ``teacher-forced``: the expert's final hidden states are kept during generation (``[B, T, H]``, small); then
  the amateur reads every finished trajectory in one forward pass, and both output layers are applied to chunks
  of steps.

Records are appended per batch (fsynced); a killed run resumes with the same command and ends with exactly the
records an uninterrupted run writes. Under ``accelerate launch``/``torchrun`` each rank samples every
``world_size``-th batch into its own shard and rank 0 merges the shards in problem order.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from . import layout
from .config import flag, option, to_dict
from .contrast import StepReduction, reduce_step
from .embedded import DEFAULT_AMATEUR, DEFAULT_EXPERT
from .generation import CachedDecoder, left_pad
from .problems import Problem, load_problems
from .utils import (InputError, JsonlAppender, Stopwatch, dist_info, read_complete_jsonl,
                    read_json, write_json, write_jsonl, writes_output)

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "Please reason step by step."


@dataclass(frozen=True)
class SampleConfig:
    """Sample the expert's reasoning prefixes and keep the steps where the amateur departs from it.

    example: lightreasoner sample --data ../shared/data/gsm8k_train.jsonl --max-problems 128 --output runs/s/samples.jsonl
    """

    output: str = option(help="samples file to write (JSONL); its manifest goes next to it", result=False)
    expert: str = option(DEFAULT_EXPERT, "expert model: embedded name, .gguf file, checkpoint folder or hub id",
                         run_sets=True)
    amateur: str = option(DEFAULT_AMATEUR, "amateur model (same forms as --expert)", run_sets=True)
    data: str = option("gsm8k", "problems: JSONL/JSON/Parquet file, toolkit folder, hub id, gsm8k (the shipped "
                                "GSM8K train set) or generated (the built-in generator)", run_sets=True)
    split: str = option("train", "split to read from a folder or hub dataset")
    question_field: str = option("question", "field holding the question text")
    max_problems: int | None = option(None, "use the first N problems (none = all)")
    shuffle_seed: int | None = option(None, "take a seeded random subset instead of the first N")
    skip_bad_rows: bool = option(False, "skip malformed rows (counted) instead of stopping")
    generator_seed: int = option(0, "seed of the built-in problem generator")
    system_prompt: str = option(DEFAULT_SYSTEM_PROMPT, "system message of the expert's chat template")
    max_new_tokens: int = option(128, "length of the expert's reasoning prefix, in tokens")
    batch_size: int = option(32, "problems per batch")
    alpha: float = option(0.2, "plausible set: tokens with p_E >= alpha * max p_E")
    beta: float = option(0.4, "keep steps with KL(p_E || p_A) >= beta")
    selection: bool = option(True, "select steps by beta (--no-selection keeps every step: ablation)")
    contrast: bool = option(True, "contrastive label (--no-contrast: p_E renormalised on the plausible set)")
    include_first_step: bool = option(False, "also keep step t=0 (the authors skip it)")
    amateur_pass: str = option("teacher-forced", "how the amateur scores: one pass per batch after generation, "
                                                 "or in lockstep on its own KV cache",
                               choices=("teacher-forced", "lockstep"))
    format: str = option("ours", "also write the authors' per-step format as <stem>.reference.jsonl",
                         choices=("ours", "reference"))
    dtype: str = option("auto", "model dtype", choices=("auto", "float32", "bfloat16", "float16"), run_sets=True)
    device: str | None = option(None, "device (default: cuda if available, else cpu)", run_sets=True, result=False)
    trust_remote_code: bool = option(False, "allow model repositories to run their own code")
    allow_vocab_mismatch: bool = option(False, "compare only the common id range of differing vocabularies")
    progress: bool = option(True, "show a progress bar", result=False)
    rerun: bool = option(False, "redo the stage when --output holds samples made with other settings (they are "
                                "deleted)", result=False, saved=False, run_sets=True)

    def validate(self) -> list[str]:
        errs = []
        if not 0 < self.alpha <= 1:
            errs.append(f"{flag('alpha')} must be in (0, 1], got {self.alpha}")
        if self.beta < 0:
            errs.append(f"{flag('beta')} must be >= 0, got {self.beta}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                errs.append(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.max_problems is not None and self.max_problems < 1:
            errs.append(f"{flag('max_problems')} must be >= 1 or none, got {self.max_problems}")
        if not self.output.endswith(".jsonl"):
            errs.append(f"--output must be a .jsonl file, got {self.output!r}")
        return errs


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def build_prompt_ids(tokenizer: Any, question: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """Token ids of the expert's chat prompt (system + user turn, generation prompt added)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = f"{system_prompt}\n\nQuestion: {question}\nAnswer:"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids_of(model: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the tokenizer's plus those in the model's generation config."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
    if not ids:
        raise InputError("the expert's tokenizer has no eos token; set one (tokenizer.eos_token)")
    return sorted(ids)


# ---------------------------------------------------------------------------------------------------------------
# The core: one batch of problems -> records


@dataclass(frozen=True)
class ScoringParams:
    alpha: float = 0.2
    beta: float = 0.4
    selection: bool = True
    contrast: bool = True
    include_first_step: bool = False
    max_new_tokens: int = 128
    amateur_pass: str = "teacher-forced"
    chunk_steps: int = 128  # (row, step) pairs reduced at once in teacher-forced mode

    @classmethod
    def from_config(cls, cfg: SampleConfig) -> "ScoringParams":
        return cls(cfg.alpha, cfg.beta, cfg.selection, cfg.contrast, cfg.include_first_step, cfg.max_new_tokens,
                   cfg.amateur_pass)


class _Trajectory:
    """Per-problem accumulator of a batch."""

    __slots__ = ("completion", "kl", "ent_e", "ent_a", "agree", "steps", "done")

    def __init__(self) -> None:
        self.completion: list[int] = []
        self.kl: list[float] = []
        self.ent_e: list[float] = []
        self.ent_a: list[float] = []
        self.agree: list[bool] = []
        self.steps: list[dict] = []
        self.done = False

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


@torch.inference_mode()
def sample_batch(expert: Any, amateur: Any, prompts: Sequence[Sequence[int]], eos_ids: Sequence[int], pad_id: int,
                 vocab_size: int, params: ScoringParams, timer: Stopwatch | None = None) -> list[_Trajectory]:
    """Generate greedily with the expert and score every step against the amateur, for one batch.

    ``vocab_size``: the common logit width both models are compared on (see :func:`models.check_vocab`).
    Returns one :class:`_Trajectory` per prompt, in order.
    """
    timer = timer or Stopwatch()
    device = next(expert.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    lockstep = params.amateur_pass == "lockstep"
    dec_e = CachedDecoder(expert, capture_hidden=not lockstep)
    dec_a = CachedDecoder(amateur) if lockstep else None
    trajs = [_Trajectory() for _ in prompts]
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    rows = torch.arange(len(prompts), device=device)
    hidden: list[torch.Tensor] = []  # teacher-forced: per step, [B_live, H] with the live rows of that step
    live_rows: list[torch.Tensor] = []
    with timer("generation"):
        logits_e = dec_e.prefill(ids, mask)
        _sync(device)
    if dec_a is not None:
        with timer("scoring"):
            logits_a = dec_a.prefill(ids, mask)
    for t in range(params.max_new_tokens):
        if lockstep:
            with timer("scoring"):
                red = reduce_step(logits_e[:, :vocab_size], logits_a[:, :vocab_size], params.alpha,
                                  params.contrast)
                lists = (red.kl.tolist(), red.expert_entropy.tolist(), red.amateur_entropy.tolist(),
                         red.top1_agree.tolist())
                for i, r in enumerate(rows.tolist()):
                    trajs[r].add(t, red, i, params, *lists)
        else:
            hidden.append(dec_e.last_hidden)
            live_rows.append(rows)
        with timer("generation"):
            tok = logits_e.argmax(-1)
            done = torch.isin(tok, eos)
            for r, tk in zip(rows.tolist(), tok.tolist()):
                trajs[r].completion.append(tk)
            if t == params.max_new_tokens - 1:
                break
            live = (~done).nonzero().view(-1)
            if live.numel() == 0:
                break
            rows, tok = rows[live], tok[live]
            dec_e.keep(live)
            logits_e = dec_e.step(tok)
            _sync(device)
        if dec_a is not None:
            with timer("scoring"):
                dec_a.keep(live)
                logits_a = dec_a.step(tok)
    for dec in (dec_e, dec_a):
        if dec is not None:
            dec.close()  # removes its hook from the model's output layer (the hook holds the decoder's cache)
    if not lockstep:
        with timer("scoring"):
            _score_teacher_forced(expert, amateur, prompts, trajs, hidden, live_rows, pad_id, vocab_size, params)
    return trajs


def _score_teacher_forced(expert: Any, amateur: Any, prompts: Sequence[Sequence[int]], trajs: list[_Trajectory],
                          hidden: list[torch.Tensor], live_rows: list[torch.Tensor], pad_id: int, vocab_size: int,
                          params: ScoringParams) -> None:
    """One amateur pass over the finished trajectories, then both output layers on chunks of steps."""
    device = next(amateur.parameters()).device
    B, H = len(prompts), hidden[0].shape[-1]
    T = len(hidden)
    h_e = hidden[0].new_zeros((B, T, H))
    for t, (h, r) in enumerate(zip(hidden, live_rows)):
        h_e[r, t] = h
    # The amateur reads prompt + completion[:-1] (left-padded prompts, right-padded completions).
    width = max(len(p) for p in prompts)
    seqs = [[pad_id] * (width - len(p)) + list(p) + tr.completion[:-1] for p, tr in zip(prompts, trajs)]
    L = max(len(s) for s in seqs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, width - len(p):len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    h_a = amateur.base_model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    head_e, head_a = expert.get_output_embeddings(), amateur.get_output_embeddings()
    # Step t of row i is predicted at padded position width - 1 + t.
    pairs = [(i, t) for i, tr in enumerate(trajs) for t in range(len(tr.completion))]
    for c in range(0, len(pairs), params.chunk_steps):
        chunk = pairs[c:c + params.chunk_steps]
        ri = torch.tensor([i for i, _ in chunk], device=device)
        ti = torch.tensor([t for _, t in chunk], device=device)
        le = head_e(h_e[ri, ti].to(head_e.weight.device))[:, :vocab_size]
        la = head_a(h_a[ri, width - 1 + ti])[:, :vocab_size]
        red = reduce_step(le, la, params.alpha, params.contrast)
        lists = (red.kl.tolist(), red.expert_entropy.tolist(), red.amateur_entropy.tolist(),
                 red.top1_agree.tolist())
        for j, (i, t) in enumerate(chunk):
            trajs[i].add(t, red, j, params, *lists)


def to_record(problem: Problem, prompt_ids: Sequence[int], tr: _Trajectory) -> dict:
    return {"id": problem.id, "question": problem.question, "prompt_ids": list(prompt_ids),
            "completion_ids": tr.completion, "kl": tr.kl, "expert_entropy": tr.ent_e, "amateur_entropy": tr.ent_a,
            "top1_agree": tr.agree, "steps": tr.steps}


# ---------------------------------------------------------------------------------------------------------------
# The stage: problems -> samples file (resumable, sharded across ranks)


def shard_path(output: Path, rank: int) -> Path:
    return output.with_name(f"{output.stem}.rank{rank}.jsonl")


def manifest_path(output: str | Path) -> Path:
    """Where a samples file is described: its stage folder's ``meta.json`` (written last)."""
    return Path(output).with_name(layout.META)


def sample_problems(expert: Any, amateur: Any, tokenizer: Any, problems: Sequence[Problem], output: str | Path, *,
                    params: ScoringParams, batch_size: int, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                    vocab_size: int | None = None, rank: int = 0, world_size: int = 1,
                    progress: bool = True) -> dict[str, float]:
    """Sample ``problems`` into ``output`` (or this rank's shard of it); skip what a previous run finished.

    Batches are fixed slices of ``problems`` (batch ``b`` = problems ``b*batch_size ...``) and rank ``r`` takes
    batches ``b % world_size == r``, so results never depend on where a run was interrupted or how many
    processes ran. Returns this call's timings in seconds.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    path = output if world_size == 1 else shard_path(output, rank)
    done = {r["id"] for r in read_complete_jsonl(path)}
    vocab_size = vocab_size or int(expert.get_output_embeddings().weight.shape[0])
    eos = eos_ids_of(expert, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    batches = [list(problems[i:i + batch_size]) for i in range(0, len(problems), batch_size)]
    mine = [b for k, b in enumerate(batches) if k % world_size == rank]
    todo = [b for b in mine if any(p.id not in done for p in b)]
    timer = Stopwatch()
    kept = total = 0
    n_mine = sum(len(b) for b in mine)
    bar = tqdm(total=n_mine, initial=n_mine - sum(p.id not in done for b in todo for p in b), unit="problem",
               desc=f"sample{f' rank {rank}' if world_size > 1 else ''}", disable=not progress)
    with JsonlAppender(path) as out:
        for batch in todo:
            prompts = [build_prompt_ids(tokenizer, p.question, system_prompt) for p in batch]
            trajs = sample_batch(expert, amateur, prompts, eos, pad, vocab_size, params, timer)
            records = [to_record(p, ids, tr) for p, ids, tr in zip(batch, prompts, trajs) if p.id not in done]
            out.write_many(records)
            for r in records:
                kept += len(r["steps"])
                total += len(r["completion_ids"])
            bar.update(len(records))
            bar.set_postfix(kept=f"{kept / max(total, 1):.1%}", gen_s=f"{timer.totals.get('generation', 0):.0f}",
                            score_s=f"{timer.totals.get('scoring', 0):.0f}")
    bar.close()
    return timer.totals


def summarize(records: Sequence[dict], beta: float) -> dict[str, Any]:
    """Counts, mean plausible-set size and KL quantiles over all steps of a samples file."""
    kls = sorted(k for r in records for k in r["kl"])
    steps = [s for r in records for s in r["steps"]]
    qs = {}
    for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99):
        qs[f"p{int(q * 100)}"] = round(kls[min(len(kls) - 1, int(q * len(kls)))], 6) if kls else None
    return {
        "counts": {"problems": len(records), "steps": len(kls), "kept_steps": len(steps),
                   "kept_fraction": round(len(steps) / len(kls), 6) if kls else 0.0,
                   "steps_at_or_above_beta": sum(k >= beta for k in kls),
                   "mean_plausible_set_size": round(sum(len(s["token_ids"]) for s in steps) / len(steps), 4)
                   if steps else None,
                   "completion_tokens": sum(len(r["completion_ids"]) for r in records),
                   "finished_with_eos": None},
        "kl_quantiles": qs,
        "kl_mean": round(sum(kls) / len(kls), 6) if kls else None,
    }


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


def _merge_shards(output: Path, world_size: int, order: dict[str, int]) -> list[dict]:
    records = []
    for r in range(world_size):
        records += read_complete_jsonl(shard_path(output, r))
    records.sort(key=lambda rec: order[rec["id"]])
    write_jsonl(output, records)
    for r in range(world_size):
        shard_path(output, r).unlink(missing_ok=True)
    return records


def _wait_for(paths: list[Path], timeout_s: float = 7 * 24 * 3600) -> None:
    t0 = time.time()
    while not all(p.exists() for p in paths):
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"waited too long for {[str(p) for p in paths if not p.exists()]}")
        time.sleep(2)


def identity(cfg: SampleConfig, **inputs: str) -> dict:
    """The sampling stage's identity (see :mod:`.layout`): its result settings and its inputs' fingerprints
    (``inputs`` overrides them, e.g. ``run`` naming a model by an upstream stage's fingerprint)."""
    found = {"expert": lambda: layout.model_input(cfg.expert), "amateur": lambda: layout.model_input(cfg.amateur),
             "data": lambda: layout.data_input(cfg.data)}
    ident = layout.stage_identity("sample", cfg, {k: inputs.get(k) or f() for k, f in found.items()})
    ident["settings"]["file"] = Path(cfg.output).name  # one samples file per stage folder
    return ident


@writes_output("sample", kind="file")
def main(cfg: SampleConfig) -> int:
    """``lightreasoner sample``: the stage folder is --output's folder; its meta.json (written last) holds the
    identity, the manifest (counts, models, timings) and the versions."""
    info = dist_info()
    output = Path(cfg.output)
    ident = identity(cfg)
    if not info.is_main:  # rank 0 claims (and, with --rerun, clears) the folder; the others follow its claim
        _wait_for_claim(output.parent, ident)
        return 0 if layout.stage_state(output.parent, ident).status == "done" else _sample(cfg, info, None)
    with layout.StageRun(output.parent, ident, rerun=cfg.rerun, shown=output) as stage:  # no record is kept
        if stage.done:
            logger.info("%s is complete for these settings; nothing to do", output)
            return 0
        return _sample(cfg, info, stage)


def _wait_for_claim(folder: Path, ident: dict, timeout_s: float = 3600) -> None:
    t0 = time.time()
    while layout.stage_state(folder, ident).status not in ("partial", "done"):
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"rank 0 did not claim {folder} within {timeout_s:.0f} s")
        time.sleep(1)


def _sample(cfg: SampleConfig, info: Any, stage: layout.StageRun | None) -> int:
    from .models import check_vocab, load_model

    output = Path(cfg.output)
    stats: dict[str, Any] = {}
    problems = load_problems(cfg.data, split=cfg.split, question_field=cfg.question_field, answer_field=None,
                             max_problems=cfg.max_problems, shuffle_seed=cfg.shuffle_seed,
                             skip_bad_rows=cfg.skip_bad_rows, generator_seed=cfg.generator_seed, stats=stats)
    if not problems:
        raise InputError(f"--data {cfg.data}: no problems to sample")
    device = cfg.device or (f"cuda:{info.local_rank}" if torch.cuda.is_available() else None)
    t_load = time.perf_counter()
    expert = load_model(cfg.expert, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    amateur = load_model(cfg.amateur, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    vocab = check_vocab(expert, amateur, cfg.allow_vocab_mismatch)
    load_s = time.perf_counter() - t_load
    if stage is not None:
        stage.start()
    state_path = output.with_name(f"{output.stem}.rank{info.rank}.timings.json")
    prev = read_json(state_path) if state_path.exists() else {}
    t0 = time.perf_counter()
    timings = sample_problems(expert.model, amateur.model, expert.tokenizer, problems, output,
                              params=ScoringParams.from_config(cfg), batch_size=cfg.batch_size,
                              system_prompt=cfg.system_prompt, vocab_size=vocab, rank=info.rank,
                              world_size=info.world_size, progress=cfg.progress)
    timings = {k: round(v + prev.get(k, 0.0), 3) for k, v in
               {**timings, "total": time.perf_counter() - t0, "model_load": load_s}.items()}
    write_json(state_path, timings)
    if stage is None:  # ranks > 0: rank 0 merges and describes
        return 0
    if info.world_size > 1:
        _wait_for([output.with_name(f"{output.stem}.rank{r}.timings.json") for r in range(info.world_size)])
        records = _merge_shards(output, info.world_size, {p.id: i for i, p in enumerate(problems)})
    else:
        records = read_complete_jsonl(output)
    summary = summarize(records, cfg.beta)
    eos = set(eos_ids_of(expert.model, expert.tokenizer))
    summary["counts"]["finished_with_eos"] = sum(bool(r["completion_ids"]) and r["completion_ids"][-1] in eos
                                                 for r in records)
    summary["counts"]["bad_rows_skipped"] = stats.get("bad_rows", 0)
    if cfg.format == "reference":
        write_jsonl(output.with_name(f"{output.stem}.reference.jsonl"), reference_records(records, expert.tokenizer))
    all_timings = [read_json(output.with_name(f"{output.stem}.rank{r}.timings.json")) for r in
                   range(info.world_size)]
    stage.finish(config=to_dict(cfg), counts=summary["counts"], extra={
        "complete": len(records) == len(problems),
        "samples": output.name,
        "problems_source": stats.get("source"),
        "expert": expert.describe(),
        "amateur": amateur.describe(),
        "compared_vocab": vocab,
        **{k: v for k, v in summary.items() if k != "counts"},
        "timings": {"per_rank": all_timings,
                    "generation_s": round(sum(t.get("generation", 0) for t in all_timings), 3),
                    "scoring_s": round(sum(t.get("scoring", 0) for t in all_timings), 3),
                    "wall_s": round(max(t.get("total", 0) for t in all_timings), 3)},
    })
    c = summary["counts"]
    logger.info("wrote %s: %d problems, %d/%d steps kept (%.1f%%), mean plausible set %.2f", output,
                c["problems"], c["kept_steps"], c["steps"], 100 * c["kept_fraction"],
                c["mean_plausible_set_size"] or math.nan)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# inspect


@dataclass(frozen=True)
class InspectConfig:
    """Print kept steps of a samples file: the end of the prefix, both models' top tokens, the label and KL.

    example: lightreasoner inspect --samples runs/s/samples.jsonl --min-kl 2 --limit 5
    """

    samples: str = option(help="samples file written by `lightreasoner sample`")
    id: str | None = option(None, "only this problem id")
    min_kl: float | None = option(None, "only steps with KL >= this")
    max_kl: float | None = option(None, "only steps with KL <= this")
    limit: int = option(10, "print at most this many steps")
    context: int = option(12, "prefix tokens shown before the step")
    tokenizer: str | None = option(None, "tokenizer to decode with (default: the manifest's expert)")


def format_step(record: dict, step: dict, tokenizer: Any, context: int = 12) -> str:
    comp = record["completion_ids"]
    prefix = tokenizer.decode(comp[max(0, step["pos"] - context):step["pos"]])

    def toks(pairs: Sequence[Sequence[float]]) -> str:
        return "  ".join(f"{tokenizer.decode([int(i)])!r} {p:.3f}" for i, p in pairs)

    label = list(zip(step["token_ids"], step["weights"]))
    return (f"[{record['id']} step {step['pos']}] KL {step['kl']:.3f}\n"
            f"  ...{prefix!r}\n"
            f"  expert : {toks(step['expert_top'])}\n"
            f"  amateur: {toks(step['amateur_top'])}\n"
            f"  label  : {toks(label)}")


def inspect_main(cfg: InspectConfig) -> int:
    from .models import load_tokenizer

    path = Path(cfg.samples)
    if not path.exists():
        raise InputError(f"--samples {path}: no such file")
    spec = cfg.tokenizer
    if spec is None:
        mpath = manifest_path(path)
        if not mpath.exists():
            raise InputError(f"--samples {path}: no manifest next to it ({mpath.name}); pass --tokenizer")
        spec = read_json(mpath)["expert"]["spec"]
    tok = load_tokenizer(spec)
    shown = 0
    for rec in read_complete_jsonl(path):
        if cfg.id is not None and rec["id"] != cfg.id:
            continue
        for step in rec["steps"]:
            if cfg.min_kl is not None and step["kl"] < cfg.min_kl:
                continue
            if cfg.max_kl is not None and step["kl"] > cfg.max_kl:
                continue
            print(format_step(rec, step, tok, cfg.context) + "\n")
            shown += 1
            if shown >= cfg.limit:
                return 0
    if shown == 0:
        print("no kept steps match")
    return 0
