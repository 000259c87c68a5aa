"""Stage 1, ``lightreasoner sample``: problems -> a samples file of expert prefixes with per-step soft labels.

The expert writes a greedy reasoning prefix for each problem and every step is scored against the amateur
(:mod:`.sampling`: the method's core; :mod:`.prompts`: the chat prompt; :mod:`.crosstok`: an amateur with another
tokenizer, which reads the same text through its own tokenizer). This module is the stage around it:
problems in fixed batches, records appended per batch (fsynced), so a killed run resumes with the same command
and ends with exactly the records an uninterrupted run writes. Under ``accelerate launch``/``torchrun`` each rank
samples every ``world_size``-th batch into its own shard and rank 0 merges the shards in problem order. The stage
folder's ``meta.json`` (written last) holds the identity, counts, models and timings. ``lightreasoner inspect``
prints kept steps of a samples file.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import layout
from .api import expose, file_output
from .config import Checked, flag, option, to_dict
from .crosstok import alignment_summary
from .embedded import DEFAULT_AMATEUR, DEFAULT_EXPERT
from .earlyexit import parse_self_spec
from .generation import pad_id_of
from .models import revision_problem
from .problems import Problem, load_problems
from .prompts import DEFAULT_SYSTEM_PROMPT, build_prompt_ids, eos_ids
from .sampling import ScoringParams, format_step, reference_records, sample_batch, to_record
from .shards import merge_shards, rank_device, shard_path, share, share_cores, wait_for_claim, wait_for_files
from .textpath import TextPath, text_path
from .utils import (InputError, JsonlAppender, Stopwatch, dist_info, read_complete_jsonl,
                    read_json, write_json, write_jsonl, writes_output)

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class SampleConfig(Checked):
    """Sample the expert's reasoning prefixes and keep the steps where the amateur departs from it.

    example: lightreasoner sample --data ../shared/data/gsm8k_train.jsonl --max-problems 128 --output runs/s/samples.jsonl
    """

    output: str = option(help="samples file to write (JSONL); its manifest goes next to it", result=False)
    expert: str = option(DEFAULT_EXPERT, "expert model: embedded name, .gguf file, checkpoint folder or hub id",
                         run_sets=True)
    amateur: str = option(DEFAULT_AMATEUR, "amateur model (same forms as --expert), or self:LAYER: the expert's "
                                           "own first LAYER layers through its final norm and output layer",
                          run_sets=True)
    expert_revision: str | None = option(None, "branch, tag or commit of a hub --expert (none: its main branch)",
                                         run_sets=True, result=False)  # part of the expert's input fingerprint
    amateur_revision: str | None = option(None, "branch, tag or commit of a hub --amateur", run_sets=True,
                                          result=False)
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
    amateur_tokens: str = option("auto", "how the amateur reads the expert's completion: ids (the same token ids), "
                                         "text (its own tokenization of the same text, for an amateur with another "
                                         "tokenizer; teacher-forced only) or auto (ids when both tokenizers are "
                                         "the same, else text)", choices=("auto", "ids", "text"))
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
        if self.amateur_tokens == "text" and self.amateur_pass == "lockstep":
            errs.append(f"{flag('amateur_tokens')} text scores teacher-forced only: drop {flag('amateur_pass')} "
                        f"lockstep, or use {flag('amateur_tokens')} ids with an amateur sharing the expert's "
                        f"tokenizer")
        if self.output is not None and not self.output.endswith(".jsonl"):
            errs.append(f"--output must be a .jsonl file, got {self.output!r}")
        try:
            parse_self_spec(self.amateur, flag("amateur"))
        except InputError as e:
            errs.append(str(e))
        revisions = (revision_problem(self.expert, self.expert_revision, flag("expert_revision")),
                     revision_problem(self.amateur, self.amateur_revision, flag("amateur_revision")))
        return errs + [p for p in revisions if p]


# ---------------------------------------------------------------------------------------------------------------
# The stage: problems -> samples file (resumable, sharded across ranks)


def manifest_path(output: str | Path) -> Path:
    """Where a samples file is described: its stage folder's ``meta.json`` (written last)."""
    return Path(output).with_name(layout.META)


def sample_problems(expert: Any, amateur: Any, tokenizer: Any, problems: Sequence[Problem], output: str | Path, *,
                    params: ScoringParams, batch_size: int, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                    vocab_size: int | None = None, rank: int = 0, world_size: int = 1,
                    progress: bool = True, text: TextPath | None = None) -> dict[str, float]:
    """Sample ``problems`` into ``output`` (or this rank's shard of it); skip what a previous run finished.

    ``text``: score on the text path (the amateur with another tokenizer reads its own chat prompt of each
    question, :mod:`.textpath`); ``None``: the id path, on ``vocab_size`` ids (default: the expert's rows).

    Batches are fixed slices of ``problems`` (batch ``b`` = problems ``b*batch_size ...``) and rank ``r`` takes
    batches ``b % world_size == r``, so results never depend on where a run was interrupted or how many
    processes ran. Returns this call's timings in seconds.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    path = output if world_size == 1 else shard_path(output, rank)
    done = {r["id"] for r in read_complete_jsonl(path)}
    vocab_size = vocab_size or int(expert.get_output_embeddings().weight.shape[0])
    eos = eos_ids(tokenizer, expert)
    pad = pad_id_of(tokenizer, eos)
    batches = [list(problems[i:i + batch_size]) for i in range(0, len(problems), batch_size)]
    mine = share(batches, rank, world_size)
    todo = [b for b in mine if any(p.id not in done for p in b)]
    timer = Stopwatch()
    kept = total = 0
    n_mine = sum(len(b) for b in mine)
    bar = tqdm(total=n_mine, initial=n_mine - sum(p.id not in done for b in todo for p in b), unit="problem",
               desc=f"sample{f' rank {rank}' if world_size > 1 else ''}", disable=not progress)
    with JsonlAppender(path) as out:
        for batch in todo:
            prompts = [build_prompt_ids(tokenizer, p.question, system_prompt) for p in batch]
            am_prompts = None if text is None else [build_prompt_ids(text.amateur_tokenizer, p.question,
                                                                     system_prompt) for p in batch]
            trajs = sample_batch(expert, amateur, prompts, eos, pad, vocab_size, params, timer, text=text,
                                 amateur_prompts=am_prompts)
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
    """Counts, mean plausible-set size and KL quantiles over all scored steps of a samples file (the text path's
    skipped steps have no KL), and on the text path the alignment counts (:func:`crosstok.alignment_summary`)."""
    kls = sorted(k for r in records for k in r["kl"] if k is not None)
    steps = [s for r in records for s in r["steps"]]
    qs = {}
    for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99):
        qs[f"p{int(q * 100)}"] = round(kls[min(len(kls) - 1, int(q * len(kls)))], 6) if kls else None
    out = {
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
    if any("alignment" in r for r in records):
        out["alignment"] = alignment_summary(records)
    return out


def identity(cfg: SampleConfig, **inputs: str) -> dict:
    """The sampling stage's identity (see :mod:`.layout`): its result settings and its inputs' fingerprints
    (``inputs`` overrides them, e.g. ``run`` naming a model by an upstream stage's fingerprint)."""
    expert = inputs.get("expert") or layout.model_input(cfg.expert, cfg.expert_revision)
    found = {"amateur": lambda: layout.amateur_input(cfg.amateur, cfg.amateur_revision, expert),
             "data": lambda: layout.data_input(cfg.data)}
    ident = layout.stage_identity("sample", cfg, {"expert": expert,
                                                  **{k: inputs.get(k) or f() for k, f in found.items()}})
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
        return 0 if wait_for_claim(output.parent, ident) == "done" else _sample(cfg, info, None)
    with layout.StageRun(output.parent, ident, rerun=cfg.rerun, shown=output) as stage:  # no record is kept
        if stage.done:
            logger.info("%s is complete for these settings; nothing to do", output)
            return 0
        return _sample(cfg, info, stage)


def _load_models(cfg: SampleConfig, device: str) -> tuple[Any, Any]:
    """The expert and the amateur (:class:`models.LoadedModel`) of a config, on ``device``, each checked to give
    its own logits from the hidden states sampling scores (:func:`heads.check_output_logits`)."""
    from .heads import check_output_logits
    from .models import load_amateur, load_model

    kw = {"dtype": cfg.dtype, "device": device, "trust_remote_code": cfg.trust_remote_code}
    expert = load_model(cfg.expert, revision=cfg.expert_revision, **kw)
    amateur = load_amateur(cfg.amateur, expert, revision=cfg.amateur_revision, **kw)
    check_output_logits(expert.model, f"expert {cfg.expert!r}")
    check_output_logits(amateur.model, f"amateur {cfg.amateur!r}")
    return expert, amateur


def _eos_or_none(model: Any) -> list[int]:
    try:
        return eos_ids(model.tokenizer, model.model)
    except InputError:
        return []


def choose_amateur_path(cfg: SampleConfig, expert: Any, amateur: Any) -> tuple[int, TextPath | None, dict]:
    """How the amateur reads the expert's completions (``cfg.amateur_tokens``; ``auto``: ids when both tokenizers
    map the same ids to the same tokens, else text). Returns the compared width, the text path (``None``: ids)
    and what the manifest records (``path``, ``reason``); logs the choice. Raises :class:`InputError` for the
    text path with ``lockstep`` and, on the id path, for differing tokenizers without --allow-vocab-mismatch."""
    from .models import check_vocab, same_vocabulary

    mode, reason = cfg.amateur_tokens, f"{flag('amateur_tokens')} {cfg.amateur_tokens}"
    if mode == "auto":
        if same_vocabulary(expert.tokenizer, amateur.tokenizer):
            mode, reason = "ids", "auto: both tokenizers map the same ids to the same tokens"
        elif cfg.allow_vocab_mismatch:
            mode, reason = "ids", f"auto: the tokenizers differ and {flag('allow_vocab_mismatch')} compares ids"
        else:
            mode, reason = "text", (f"auto: the tokenizers differ ({len(expert.tokenizer)} vs "
                                    f"{len(amateur.tokenizer)} tokens, not the same id for id)")
    if mode == "ids":
        vocab = check_vocab(expert, amateur, cfg.allow_vocab_mismatch)
        logger.info("the amateur reads the expert's token ids (id path; %s)", reason)
        return vocab, None, {"path": "ids", "reason": reason}
    if cfg.amateur_pass == "lockstep":
        raise InputError(f"the amateur {cfg.amateur!r} takes the text path ({reason}), which scores teacher-forced "
                         f"only: drop {flag('amateur_pass')} lockstep, or pass {flag('amateur_tokens')} ids "
                         f"(with {flag('allow_vocab_mismatch')} for differing tokenizers)")
    tp = text_path(expert.tokenizer, amateur.tokenizer, expert_rows=expert.vocab_rows,
                   amateur_rows=amateur.vocab_rows, expert_eos=_eos_or_none(expert),
                   amateur_eos=_eos_or_none(amateur))
    logger.info("the amateur reads the expert's text through its own tokenizer (text path; %s)", reason)
    return tp.vmap.expert_width, tp, {"path": "text", "reason": reason, "fast_path": tp.vmap.fast,
                                      "unmapped_amateur_ids": tp.vmap.unmapped, "same_token_ids": tp.vmap.twins}


def _sample(cfg: SampleConfig, info: Any, stage: layout.StageRun | None) -> int:
    output = Path(cfg.output)
    stats: dict[str, Any] = {}
    problems = load_problems(cfg.data, split=cfg.split, question_field=cfg.question_field, answer_field=None,
                             max_problems=cfg.max_problems, shuffle_seed=cfg.shuffle_seed,
                             skip_bad_rows=cfg.skip_bad_rows, generator_seed=cfg.generator_seed, stats=stats)
    if not problems:
        raise InputError(f"--data {cfg.data}: no problems to sample")
    share_cores(info)
    device = rank_device(cfg.device, info)
    t_load = time.perf_counter()
    expert, amateur = _load_models(cfg, device)
    vocab, text, path_facts = choose_amateur_path(cfg, expert, amateur)
    load_s = time.perf_counter() - t_load
    if stage is not None:
        stage.start(resolved={"dtype": expert.describe()["dtype"]})
    state_path = output.with_name(f"{output.stem}.rank{info.rank}.timings.json")
    prev = read_json(state_path) if state_path.exists() else {}
    t0 = time.perf_counter()
    timings = sample_problems(expert.model, amateur.model, expert.tokenizer, problems, output,
                              params=ScoringParams.from_config(cfg), batch_size=cfg.batch_size,
                              system_prompt=cfg.system_prompt, vocab_size=vocab, rank=info.rank,
                              world_size=info.world_size, progress=cfg.progress, text=text)
    timings = {k: round(v + prev.get(k, 0.0), 3) for k, v in
               {**timings, "total": time.perf_counter() - t0, "model_load": load_s}.items()}
    write_json(state_path, timings)
    if stage is None:  # ranks > 0: rank 0 merges and describes
        return 0
    if info.world_size > 1:
        wait_for_files([output.with_name(f"{output.stem}.rank{r}.timings.json") for r in range(info.world_size)])
        records = merge_shards(output, [p.id for p in problems])
    else:
        records = read_complete_jsonl(output)
    summary = summarize(records, cfg.beta)
    eos = set(eos_ids(expert.tokenizer, expert.model))
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
        "amateur_tokens": {**path_facts, **summary.get("alignment", {})},
        **{k: v for k, v in summary.items() if k not in ("counts", "alignment")},
        "timings": {"per_rank": all_timings,
                    "generation_s": round(sum(t.get("generation", 0) for t in all_timings), 3),
                    "scoring_s": round(sum(t.get("scoring", 0) for t in all_timings), 3),
                    "wall_s": round(max(t.get("total", 0) for t in all_timings), 3)},
    })
    c = summary["counts"]
    logger.info("wrote %s: %d problems, %d/%d steps kept (%.1f%%), mean plausible set %.2f", output,
                c["problems"], c["kept_steps"], c["steps"], 100 * c["kept_fraction"],
                c["mean_plausible_set_size"] or math.nan)
    if "alignment" in summary:
        a = summary["alignment"]
        logger.info("text path: %d aligned, %d marginalised, %d approximated, %d skipped steps; mean dropped "
                    "amateur mass %.2g", a["aligned"], a["marginalised"], a["approximated"], a["skipped"],
                    a["mean_dropped_mass"] or 0.0)
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


expose(__name__, SampleConfig, main, file_output)  # lightreasoner.sample(cfg) runs the stage (see .api)

__all__ = ["SampleConfig", "main", "identity", "sample_problems", "summarize", "InspectConfig", "inspect_main",
           "manifest_path", "shard_path"]
