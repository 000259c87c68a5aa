"""The paper's baseline: rejection-sampling SFT (RFT).

The expert samples ``k`` solutions per training problem at a temperature; the solutions whose final answer is
right (graded as ``eval`` grades GSM8K) are kept, and the expert is LoRA-tuned on them with the same LoRA
settings as LightReasoner, on completion tokens only.

Training is LightReasoner's (the library behind ``lightreasoner train``: :mod:`.trajectories`, :mod:`.training`):
a kept solution becomes a sample record whose every completion position is a "kept step" with a one-hot label, and
``KL(one-hot || p) = -log p(token)`` is exactly the SFT cross-entropy. So "tuned tokens" are counted the same way
for both methods; the loop's other settings are ``train``'s defaults (:class:`training.TrainParams`).

Under ``accelerate launch``/``torchrun`` each rank samples the solutions of every ``world_size``-th problem into
its own shard and rank 0 merges them (:mod:`.shards`); then every rank trains, as ``train`` does under a launcher.

Outputs (``--output DIR``): ``candidates.jsonl`` (every sampled solution with its verdict, in problem order;
resumable),
``train_samples.jsonl`` (+ manifest), ``adapter/`` (the train output, with a model card describing this baseline,
:func:`modelcard.sft_card`) and ``summary.json`` (problems sampled and used, trajectories, tuned tokens, sampling
and training time).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import layout, modelcard, shards
from .api import expose
from .config import Checked, flag, option, to_dict
from .heads import check_output_logits
from .embedded import DEFAULT_EXPERT
from .problems import Problem, load_problems
from .trajectories import MAX_LENGTH, check_token_range, load_training_examples, manifest_path
from .training import TrainParams, make_accelerator, train
from .prompts import DEFAULT_SYSTEM_PROMPT, build_prompt_ids
from .utils import (DistInfo, InputError, JsonlAppender, dist_info, environment_info, read_complete_jsonl,
                    read_json, write_json, write_jsonl, writes_output)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTConfig(Checked):
    """Rejection-sampling SFT baseline: sample k solutions per problem, keep the right ones, LoRA-tune on them.

    example: lightreasoner sft --data ../shared/data/gsm8k_train.jsonl --max-problems 128 --output runs/sft
    """

    output: str = option(help="output folder", result=False)
    expert: str = option(DEFAULT_EXPERT, "expert model (same forms as in sample)", run_sets=True)
    expert_revision: str | None = option(None, "branch, tag or commit of a hub --expert (none: its main branch)",
                                         run_sets=True, result=False)  # part of the expert's input fingerprint
    data: str = option("gsm8k", "problems with reference answers (GSM8K form): file, folder, hub id, gsm8k (the "
                                "shipped GSM8K train set) or generated", run_sets=True)
    split: str = option("train", "split to read from a folder or hub dataset")
    question_field: str = option("question", "field holding the question")
    answer_field: str = option("answer", "field holding the reference answer (text after #### is used)")
    max_problems: int | None = option(None, "use the first N problems")
    shuffle_seed: int | None = option(None, "take a seeded random subset instead of the first N")
    skip_bad_rows: bool = option(False, "skip malformed rows (counted) instead of stopping")
    generator_seed: int = option(0, "seed of the built-in problem generator")
    system_prompt: str = option(DEFAULT_SYSTEM_PROMPT, "system message of the chat prompt")
    samples_per_problem: int = option(4, "solutions sampled per problem (k)")
    temperature: float = option(0.7, "sampling temperature")
    max_new_tokens: int = option(512, "longest solution, in tokens")
    batch_size: int = option(32, "sequences decoded together (continuous batching)")
    seed: int = option(0, "sampling seed", run_sets=True)
    steps_per_update: int = option(2048, "completion tokens per optimizer update")
    max_steps: int = option(1000, "optimizer updates (ignored when --epochs is set)")
    epochs: float | None = option(2.0, "passes over the kept solutions")
    max_tokens_per_forward: int = option(1024, "bound on a training forward's padded tokens (rows x longest row); "
                                              "every solution token gets full-vocabulary logits, so this sets the "
                                              "peak memory (4096 reached 24 GB on the 1.5B on CPU)")
    save_every: int | None = option(10, "save a resumable training checkpoint every this many updates (none: only "
                                        "the final adapter, so a killed training starts over)", result=False)
    lr: float = option(5e-5, "peak learning rate")
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: float = option(16, "LoRA alpha")
    lora_targets: tuple[str, ...] = option(("q_proj", "v_proj"), "LoRA target modules")
    dtype: str = option("auto", "model dtype", choices=("auto", "float32", "bfloat16", "float16"), run_sets=True)
    device: str | None = option(None, "device (default: cuda if available, else cpu)", run_sets=True, result=False)
    trust_remote_code: bool = option(False, "allow model code from the hub", result=False)
    progress: bool = option(True, "show progress bars", result=False)
    rerun: bool = option(False, "redo the stage when --output holds an SFT run of other settings (it is deleted)",
                         result=False, saved=False, run_sets=True)

    def validate(self) -> list[str]:
        errs = []
        if self.samples_per_problem < 1:
            errs.append(f"{flag('samples_per_problem')} must be >= 1, got {self.samples_per_problem}")
        if self.temperature <= 0:
            errs.append(f"{flag('temperature')} must be > 0 for sampling, got {self.temperature}")
        from .models import revision_problem

        revision = revision_problem(self.expert, self.expert_revision, flag("expert_revision"))
        return errs + train_params(self).validate() + ([revision] if revision else [])


def train_params(cfg: SFTConfig) -> TrainParams:
    """The training loop's settings: SFT's own, the rest `lightreasoner train`'s defaults (same LoRA, seed 42)."""
    return TrainParams(steps_per_update=cfg.steps_per_update, max_steps=cfg.max_steps,
                       epochs=None if cfg.epochs is None else float(cfg.epochs), lr=float(cfg.lr), lora_r=cfg.lora_r,
                       lora_alpha=float(cfg.lora_alpha), lora_targets=tuple(cfg.lora_targets), dtype=cfg.dtype,
                       save_every=cfg.save_every, max_tokens_per_forward=cfg.max_tokens_per_forward)


def model_options(cfg: SFTConfig) -> dict[str, Any]:
    """How the expert loads: its revision and whether its repository's code may run."""
    return {"revision": cfg.expert_revision, "trust_remote_code": cfg.trust_remote_code}


def grade_against_reference(completion: str, answer: str) -> tuple[str | None, bool]:
    """Grade a solution against a problem's reference answer with the GSM8K rules of ``eval``."""
    from .grading import grade

    res = grade("gsm8k", {"question": "", "answer": f"#### {answer}"}, completion)
    return res.pred, bool(res.correct)


def sample_seed(seed: int, problem_id: str, j: int) -> int:
    """The sampling seed of solution ``j`` of a problem: fixed by (seed, problem id, j), whatever the batching."""
    digest = hashlib.sha256(f"{seed}:{problem_id}:{j}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def candidate_ids(problems: Sequence[Problem], k: int) -> list[str]:
    """The ids of the candidates, in problem order: ``<problem id>#<j>`` for j < k."""
    return [f"{p.id}#{j}" for p in problems for j in range(k)]


def sample_candidates(model: Any, tokenizer: Any, problems: Sequence[Problem], path: str | Path, *, k: int,
                      temperature: float, max_new_tokens: int, batch_size: int, seed: int,
                      system_prompt: str = DEFAULT_SYSTEM_PROMPT, progress: bool = True, rank: int = 0,
                      world_size: int = 1) -> None:
    """Append ``k`` graded samples per problem to ``path`` as they finish (continuous batching; resumable).

    Each sample has its own seed (:func:`sample_seed`), so a resumed run draws what an unbroken one would. Under a
    launcher rank ``rank`` samples the problems it owns (:func:`.shards.share`) into its shard and marks it done;
    :func:`collect_candidates` puts ``path`` in problem order (and merges the shards).
    """
    from tqdm.auto import tqdm

    from .generation import iter_generate

    t0 = time.perf_counter()
    path = Path(path)
    mine = shards.share(problems, rank, world_size)
    done = shards.written(path, rank, world_size)
    todo = [(p, j) for p in mine for j in range(k) if f"{p.id}#{j}" not in done]
    right = total = 0
    bar = tqdm(total=len(mine) * k, initial=len(mine) * k - len(todo), unit="sample",
               desc="sft sampling" + (f" rank {rank}" if world_size > 1 else ""), disable=not progress)
    if todo:
        prompt_of = {p.id: build_prompt_ids(tokenizer, p.question, system_prompt) for p, _ in todo}
        prompts = [prompt_of[p.id] for p, _ in todo]
        seeds = [sample_seed(seed, p.id, j) for p, j in todo]
        with JsonlAppender(path if world_size == 1 else shards.shard_path(path, rank)) as out:
            for idx, outs, _ in iter_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                              batch_size=batch_size, temperature=temperature, seed=seeds):
                records = []
                for i, g in zip(idx, outs):
                    p, j = todo[i]
                    pred, ok = grade_against_reference(g.text, p.answer or "")
                    records.append({"id": f"{p.id}#{j}", "problem_id": p.id, "question": p.question,
                                    "prompt_ids": prompts[i], "completion_ids": g.ids, "completion": g.text,
                                    "finish_reason": g.finish_reason, "pred": pred, "answer": p.answer,
                                    "correct": ok})
                    right += ok
                    total += 1
                out.write_many(records)
                bar.update(len(records))
                bar.set_postfix(correct=f"{right / max(total, 1):.1%}")
    bar.close()
    if world_size > 1:
        shards.mark_done(path, rank, candidate_ids(mine, k), samples=len(todo),
                         wall_seconds=round(time.perf_counter() - t0, 3))


def collect_candidates(path: str | Path, problems: Sequence[Problem], k: int, world_size: int = 1) -> dict[int, dict]:
    """Rank 0 (or the one process): wait for every rank's share, then rewrite ``path`` with all candidates in
    problem order (a one-process run's file, whatever the process count). Returns the ranks' marks."""
    marks = {}
    if world_size > 1:
        marks = shards.wait_for_marks(path, {r: candidate_ids(shards.share(problems, r, world_size), k)
                                             for r in range(world_size)})
    shards.merge_shards(path, candidate_ids(problems, k))
    return marks


def sft_records(candidates: Sequence[dict]) -> list[dict]:
    """Kept (correct, finished, de-duplicated) solutions as sample records with a one-hot label per token."""
    seen, out = set(), []
    for c in candidates:
        key = (c["problem_id"], tuple(c["completion_ids"]))
        if not c["correct"] or c["finish_reason"] == "length" or key in seen:
            continue
        seen.add(key)
        comp = c["completion_ids"]
        out.append({"id": c["id"], "question": c["question"], "prompt_ids": c["prompt_ids"], "completion_ids": comp,
                    "steps": [{"pos": t, "kl": 0.0, "token_ids": [tok], "weights": [1.0]}
                              for t, tok in enumerate(comp)]})
    return out


def identity(cfg: SFTConfig, **inputs: str) -> dict:
    """The SFT stage's identity: the expert and the problems' fingerprints, and the result settings."""
    found = {"expert": lambda: layout.model_input(cfg.expert, cfg.expert_revision),
             "data": lambda: layout.data_input(cfg.data)}
    return layout.stage_identity("sft", cfg, {k: inputs.get(k) or f() for k, f in found.items()})


@writes_output("sft", kind="folder")
def main(cfg: SFTConfig) -> int:
    """``lightreasoner sft``: sample, keep the right solutions, train; meta.json in --output is written last.
    Under a launcher rank 0 claims --output and the other ranks follow its claim."""
    info = dist_info()
    ident = identity(cfg)
    if not info.is_main:
        return 0 if shards.wait_for_claim(cfg.output, ident) == "done" else _sft(cfg, info, None)
    with layout.StageRun(cfg.output, ident, rerun=cfg.rerun) as stage:
        if stage.done:
            logger.info("%s is complete for these settings; nothing to do", cfg.output)
            return 0
        return _sft(cfg, info, stage)


def train_adapter(cfg: SFTConfig, samples: Path, output: Path) -> dict:
    """LoRA-tune the expert on the kept solutions in ``samples`` (as `lightreasoner train` would) into ``output``,
    resuming from its checkpoints; returns the training summary (``finished: False`` if it stopped early)."""
    from .models import load_model, load_tokenizer

    params = train_params(cfg)
    acc = make_accelerator(params)
    trajs, stats = load_training_examples(samples, load_tokenizer(cfg.expert, **model_options(cfg)),
                                          system_prompt=cfg.system_prompt)
    logger.info("%d trajectories, %d kept steps (%s format, %d records)", stats["trajectories"], stats["kept_steps"],
                stats["format"], stats["records"])
    loaded = load_model(cfg.expert, dtype=cfg.dtype, device=str(acc.device), **model_options(cfg))
    check_token_range(trajs, loaded.vocab_rows)
    check_output_logits(loaded.model, f"expert {cfg.expert!r}")
    record = {"samples": str(samples), "output": str(output), "expert": cfg.expert,
              "system_prompt": cfg.system_prompt, "max_length": MAX_LENGTH}
    return train(loaded.model, loaded.tokenizer, trajs, params, output, accelerator=acc, data_stats=stats,
                 expert=loaded.describe(), config=record)


def _sft(cfg: SFTConfig, info: DistInfo, stage: layout.StageRun | None) -> int:
    """Sample (each rank its share), keep, train (every rank); ``stage`` is None on ranks > 0."""
    out = Path(cfg.output)
    problems = load_problems(cfg.data, split=cfg.split, question_field=cfg.question_field,
                             answer_field=cfg.answer_field, max_problems=cfg.max_problems,
                             shuffle_seed=cfg.shuffle_seed, skip_bad_rows=cfg.skip_bad_rows,
                             generator_seed=cfg.generator_seed)
    missing = [p.id for p in problems if not p.answer]
    if missing:
        raise InputError(f"--data {cfg.data}: {len(missing)} problems have no reference answer in "
                         f"{flag('answer_field')} {cfg.answer_field!r} (first: {missing[0]}); SFT needs them to grade")
    if stage is not None:
        from .models import default_device, dtype_name, resolve_dtype

        dtype = resolve_dtype(cfg.dtype, shards.rank_device(cfg.device, info) or default_device())
        stage.start(resolved={"dtype": dtype_name(dtype)})
    timings = read_json(out / "timings.json") if (out / "timings.json").exists() else {}
    cand_path = out / "candidates.jsonl"
    n_candidates = len(problems) * cfg.samples_per_problem
    fingerprint, describe, per_rank = _sample_stage(cfg, info, stage, problems, cand_path, timings)
    if stage is None:  # rank 0 merges the shards into candidates.jsonl
        shards.wait_until(lambda: len(read_complete_jsonl(cand_path)) >= n_candidates,
                          f"rank 0 to merge {cand_path}", shards.SHARD_WAIT_S)
    candidates = read_complete_jsonl(cand_path)
    records = sft_records(candidates)
    if not records:
        right = sum(c["correct"] for c in candidates)
        cut = sum(c["correct"] and c["finish_reason"] == "length" for c in candidates)
        if right and cut == right:
            raise InputError(f"all {right} right solutions of {len(candidates)} sampled were cut at "
                             f"{flag('max_new_tokens')} {cfg.max_new_tokens} (unfinished solutions are not kept); raise it")
        raise InputError(f"no sampled solution was right ({len(candidates)} sampled); raise "
                         f"{flag('samples_per_problem')} or {flag('temperature')}, or check {flag('answer_field')}")
    samples = out / "train_samples.jsonl"
    if stage is None:  # every rank trains (DDP, as `train` under a launcher) on the file rank 0 writes
        shards.wait_for_files([samples, manifest_path(samples)])
        return 0 if train_adapter(cfg, samples, out / "adapter").get("finished", True) else 1
    write_jsonl(samples, records)
    write_json(manifest_path(samples), {"expert": {**describe, "fingerprint": fingerprint},
                                        "config": to_dict(cfg), "method": "rejection-sampling SFT"})
    t0 = time.perf_counter()
    try:
        tsum = train_adapter(cfg, samples, out / "adapter")
    finally:
        timings["training"] = timings.get("training", 0.0) + time.perf_counter() - t0
        write_json(out / "timings.json", timings)
    if not tsum.get("finished", True):
        return 1
    summary = {
        "problems_sampled": len(problems),
        "problems_used": len({r["id"].rsplit("#", 1)[0] for r in records}),
        "samples": len(candidates),
        "correct_samples": sum(c["correct"] for c in candidates),
        "trajectories": len(records),
        "tuned_tokens": tsum.get("kept_steps_seen", tsum.get("tuned_tokens")),
        "time_s": {k: round(v, 2) for k, v in timings.items()},
        "config": to_dict(cfg),
        "environment": environment_info(),
    }
    write_json(out / "summary.json", summary)
    counts = {k: summary[k] for k in ("problems_sampled", "problems_used", "samples", "correct_samples",
                                      "trajectories", "tuned_tokens")}
    expert = tsum.get("expert") or describe  # the model trained (describe() of the loaded expert)
    modelcard.write(out / "adapter", modelcard.sft_card({"identity": stage.identity, "config": to_dict(cfg),
                                                         "counts": counts}, expert))
    stage.finish(config=to_dict(cfg), counts=counts,
                 extra={"expert": expert, **({"sampling_per_rank": per_rank} if per_rank else {})})
    logger.info("SFT: %d/%d problems had a right solution; %s tuned tokens", summary["problems_used"],
                len(problems), summary["tuned_tokens"])
    return 0


def _sample_stage(cfg: SFTConfig, info: DistInfo, stage: layout.StageRun | None, problems: Sequence[Problem],
                  cand_path: Path, timings: dict) -> tuple[str, dict, list[dict]]:
    """Sample this rank's share of the candidates unless ``cand_path`` is complete; rank 0 (``stage`` given)
    merges every rank's share in problem order and counts the sampling time in ``timings.json``. Returns the
    expert's fingerprint and description, and the ranks' marks (their timings) when there are several."""
    from .models import load_model

    if len(read_complete_jsonl(cand_path)) >= len(problems) * cfg.samples_per_problem:
        from .models import fingerprint as model_fingerprint, resolve_source

        return model_fingerprint(resolve_source(cfg.expert)), {"spec": cfg.expert}, []
    shards.share_cores(info)
    expert = load_model(cfg.expert, dtype=cfg.dtype, device=shards.rank_device(cfg.device, info),
                        **model_options(cfg))
    t0 = time.perf_counter()
    try:
        sample_candidates(expert.model, expert.tokenizer, problems, cand_path, k=cfg.samples_per_problem,
                          temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                          seed=cfg.seed, system_prompt=cfg.system_prompt, progress=cfg.progress, rank=info.rank,
                          world_size=info.world_size)
        marks = collect_candidates(cand_path, problems, cfg.samples_per_problem, info.world_size) \
            if stage is not None else {}
    finally:  # an interrupted run's time counts too: the resumed run adds the rest
        if stage is not None:
            timings["sampling"] = timings.get("sampling", 0.0) + time.perf_counter() - t0
            write_json(cand_path.parent / "timings.json", timings)
    return expert.fingerprint, expert.describe(), list(marks.values())


expose(__name__, SFTConfig, main)  # lightreasoner.sft(cfg) runs the stage (see .api)
