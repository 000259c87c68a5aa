"""``lightreasoner train`` and ``lightreasoner merge``: teach the expert the contrastive soft labels.

The recipe, top to bottom:

1. **Data** (:func:`load_training_examples`). Sample records (``lightreasoner sample``) or the authors' per-step
   records become :class:`Trajectory` objects: one token sequence (the context up to its last kept step) and the
   kept steps on it, each a sequence *position* whose logits predict the labelled token plus a sparse soft label.
   The authors' records are regrouped by question: each step's context is rebuilt as their trainer does (chat
   template, system ``"Please reason step by step."``, generation prompt, + prefix text, re-tokenized), and steps
   whose token contexts are prefixes of one another share one sequence, so packing them is exact.
   A context longer than ``--max-length`` keeps its end: a trajectory is cut into windows that each end at a kept
   step and hold at most ``max_length`` tokens, so every kept step survives (a step with no token before it is
   dropped and counted).
2. **Plan** (:func:`plan_updates`). Each epoch shuffles the trajectories (seeded); their kept steps form one
   stream that is cut into updates of exactly ``--steps-per-update`` kept steps. A trajectory whose steps straddle
   two updates is split there (each part is forwarded only up to its own last kept step). The loss of an update
   is the mean over its kept steps. The plan is a pure function of the data and the config, which is what makes
   resuming and multi-process runs exact.
3. **Packed loss** (:func:`packed_loss`). One forward pass per trajectory (right padded; positions are absolute
   indices, so padding never moves a supervised position; the causal mask makes the pass exact for every kept
   step). Only the final hidden states at kept positions go through the output layer: ``[batch, length, vocab]``
   logits are never formed. The loss per step is ``KL(w || softmax(logits))`` over the full vocabulary in float32
   (:func:`contrast.soft_label_kl_loss`).
4. **Distribution** (accelerate). Each update's kept steps are split across ranks; every rank scales its summed
   loss by ``world_size / kept_steps_in_update``, so the averaged gradient is the global mean: N processes give
   the result of one. All ranks run the same number of micro-batches (idle ranks run an empty one), which DDP,
   FSDP and DeepSpeed ZeRO all require.
5. **Optimisation**: LoRA (r 8, alpha 16, dropout 0.05, q_proj and v_proj) or ``--full``; AdamW, lr 5e-5,
   linear decay, no warm-up, gradient clipping at 1.0, seed 42. Checkpoints ``step-000200/`` hold the trainable
   weights, optimizer, scheduler and RNG states as safetensors + JSON (:mod:`lightreasoner.checkpoint`: nothing
   is unpickled); ``--resume auto`` continues exactly. A non-finite loss or gradient norm stops the run.

Python use::

    trajs, stats = load_training_examples("samples.jsonl", tokenizer)
    summary = train(model, tokenizer, trajs, TrainConfig(samples="samples.jsonl", output="out"), "out")
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from . import checkpoint as ck
from . import layout
from . import embedded, models
from .config import ConfigError, flag, option, to_dict
from .contrast import soft_label_kl_loss
from .utils import (InputError, environment_info, iter_jsonl, read_complete_jsonl, read_json,
                    write_json, writes_output)

logger = logging.getLogger(__name__)

AUTHORS_SYSTEM_PROMPT = "Please reason step by step."
# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """LoRA-tune the expert on the contrastive soft labels written by `lightreasoner sample` (or the authors'
    per-step files), one packed forward pass per trajectory. Defaults are the paper's.

    Distributed: accelerate launch [--config_file configs/accelerate/ddp.yaml] -m lightreasoner train ...
    """

    samples: str = option(help="samples: our JSONL/Parquet records, the authors' per-step JSONL/Parquet, or a hub "
                               "dataset id of either")
    output: str = option(help="output folder: PEFT adapter, config, metrics, checkpoints, summary", result=False)
    expert: str = option(embedded.DEFAULT_EXPERT, help="expert model: embedded name, .gguf file, checkpoint folder "
                                                       "or hub id (must be the model the samples came from)", run_sets=True)
    samples_split: str = option("train", help="split to read when --samples is a hub dataset")
    force: bool = option(False, help="train even if the samples' manifest names another expert (warns)",
                         result=False)
    system_prompt: str = option(AUTHORS_SYSTEM_PROMPT,
                                help="system prompt used to rebuild contexts of the authors' per-step records")
    steps_per_update: int = option(16, help="kept steps per optimizer update (the authors' 8 x 2 accumulation)")
    max_steps: int = option(1000, help="optimizer updates to run (ignored when --epochs is set)")
    epochs: float | None = option(None, help="train for this many passes over the kept steps instead of "
                                             "--max-steps (fractions allowed)")
    stop_after: int | None = option(None, help="stop this run after this many updates in total, keeping a "
                                               "checkpoint (the schedule still spans the full run; rerun to resume)", result=False)
    lr: float = option(5e-5, help="peak learning rate (AdamW)")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    lr_scheduler: str = option("linear", help="learning-rate schedule after warm-up: linear decay to 0, or constant",
                               choices=("linear", "constant"))
    warmup_steps: int = option(0, help="linear warm-up updates before the schedule")
    max_grad_norm: float | None = option(1.0, help="clip the gradient norm to this (none: no clipping)")
    seed: int = option(42, help="seed for LoRA init, data order and dropout", run_sets=True)
    full: bool = option(False, help="train every weight (float32 master weights, bf16 autocast where the hardware "
                                    "has it) instead of LoRA")
    lora_r: int = option(8, help="LoRA rank")
    lora_alpha: float = option(16, help="LoRA alpha (scale alpha/r)")
    lora_dropout: float = option(0.05, help="dropout on the LoRA input")
    lora_targets: tuple[str, ...] = option(("q_proj", "v_proj"), help="module names LoRA adapts (comma-separated), "
                                                                      "or all-linear")
    dtype: str = option("auto", help="model weights' dtype (auto: bf16 where the hardware computes it natively); "
                                     "LoRA weights and optimizer state stay float32", choices=models.DTYPES, run_sets=True)
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward pass (less memory)")
    max_length: int = option(2048, help="longest context in tokens; longer ones keep their end (left-truncated)")
    max_tokens_per_forward: int = option(4096, help="bound on a forward pass's padded tokens (rows x longest "
                                                    "row); an update runs as several micro-batches if needed")
    save_every: int | None = option(200, help="save a checkpoint step-NNNNNN/ every this many updates", result=False)
    keep_checkpoints: int | None = option(2, help="keep only the newest this many checkpoints (none: all)",
                                         result=False)
    resume: str = option("auto", help="auto: continue from the newest complete checkpoint in --output; none: "
                                      "start fresh (refuses a folder with checkpoints); or a step-NNNNNN folder", result=False)
    log_every: int = option(10, help="log metrics every this many updates", result=False)
    tensorboard: bool = option(True, help="also log to TensorBoard (OUTPUT/tensorboard)", result=False)
    wandb: str | None = option(None, help="also log to this Weights & Biases project (needs wandb installed)",
                               result=False)
    skip_bad_rows: bool = option(False, help="skip malformed JSONL lines instead of stopping")
    trust_remote_code: bool = option(False, help="allow model code from the hub", result=False)
    rerun: bool = option(False, help="redo the stage when --output holds a training run of other settings (it is "
                                     "deleted)", result=False, saved=False, run_sets=True)

    def validate(self) -> list[str]:
        p = []
        for name in ("steps_per_update", "max_steps", "lora_r", "max_tokens_per_forward", "log_every"):
            if getattr(self, name) < 1:
                p.append(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "keep_checkpoints", "stop_after"):
            v = getattr(self, name)
            if v is not None and v < 1:
                p.append(f"{flag(name)} must be >= 1 or none, got {v}")
        if self.max_length < 2:
            p.append(f"{flag('max_length')} must be >= 2, got {self.max_length}")
        if self.epochs is not None and not self.epochs > 0:
            p.append(f"{flag('epochs')} must be > 0, got {self.epochs}")
        if not self.lr > 0:
            p.append(f"{flag('lr')} must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            p.append(f"{flag('weight_decay')} must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            p.append(f"{flag('warmup_steps')} must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            p.append(f"{flag('max_grad_norm')} must be > 0 or none, got {self.max_grad_norm}")
        if not 0 <= self.lora_dropout < 1:
            p.append(f"{flag('lora_dropout')} must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets:
            p.append(f"{flag('lora_targets')} needs at least one module name (or all-linear)")
        if self.resume not in ("auto", "none") and not ck.CHECKPOINT_RE.match(Path(self.resume).name):
            p.append(f"{flag('resume')} must be auto, none or a step-NNNNNN checkpoint folder, got {self.resume!r}")
        return p


@dataclass(frozen=True)
class MergeConfig:
    """Merge a LoRA adapter (from `lightreasoner train`) into the expert: a standalone safetensors model with its
    tokenizer and chat template, whose outputs equal base + adapter."""

    adapter: str = option(help="adapter folder written by lightreasoner train")
    output: str = option(help="folder for the merged model", result=False)
    expert: str = option(embedded.DEFAULT_EXPERT, help="the base model the adapter was trained on (same forms as "
                                                       "for train)", run_sets=True)
    dtype: str = option("auto", help="dtype to save (auto: the base checkpoint's own dtype); the merge itself is "
                                     "computed in float32", choices=models.DTYPES)
    force: bool = option(False, help="merge even if the adapter was trained on another expert (warns)",
                         result=False)
    trust_remote_code: bool = option(False, help="allow model code from the hub", result=False)
    rerun: bool = option(False, help="redo the merge when --output holds one of other inputs (it is deleted)",
                         result=False, saved=False, run_sets=True)


# Settings a resumed run must share with its checkpoint (the samples themselves are compared by content, see
# data_fingerprint): the ones that can change the result, less the inputs.
RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["result"]
                      and f.name not in ("samples", "samples_split", "expert", "dtype", "skip_bad_rows", "force"))


def samples_input(samples: str) -> str:
    """The samples' fingerprint as train's input: the sampling stage's (its meta.json), a file's content hash,
    or a hub dataset id."""
    path = Path(samples)
    if path.is_file():
        meta = layout.read_meta(path.parent)
        if meta is not None and meta.get("stage") == "sample" and meta.get("samples") == path.name:
            return meta["fingerprint"]
        return layout.file_hash(path)
    return f"hub:{samples}"


def identity(cfg: TrainConfig, **inputs: str) -> dict:
    """The training stage's identity (see :mod:`.layout`)."""
    found = {"samples": lambda: samples_input(cfg.samples), "expert": lambda: layout.model_input(cfg.expert)}
    return layout.stage_identity("train", cfg, {k: inputs.get(k) or f() for k, f in found.items()})


def merge_identity(cfg: MergeConfig, **inputs: str) -> dict:
    """The merge stage's identity: the adapter's training stage (or the adapter files) and the expert."""
    found = {"adapter": lambda: layout.output_fingerprint(cfg.adapter) or layout.fingerprint(
                 {p.name: layout.file_hash(p) for p in sorted(Path(cfg.adapter).glob("adapter_*"))}),
             "expert": lambda: layout.model_input(cfg.expert)}
    return layout.stage_identity("merge", cfg, {k: inputs.get(k) or f() for k, f in found.items()})


# ----------------------------------------------------------------------------------------------------------------
# Data: sample records -> trajectories
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """One token sequence and the kept steps on it.

    ``input_ids`` ``[L]`` ends at the last kept step's position. ``positions[s]`` (sorted, unique) is the index in
    ``input_ids`` whose logits predict step ``s``'s token; ``label_ids[s]`` / ``label_weights[s]`` its sparse soft
    label (``k`` tokens, weights summing to 1).
    """

    id: str
    input_ids: list[int]
    positions: list[int]
    label_ids: list[list[int]]
    label_weights: list[list[float]]

    @property
    def n_steps(self) -> int:
        return len(self.positions)


def manifest_path(samples: str | Path) -> Path:
    """Where a samples file is described: ``X.manifest.json`` beside ``X.jsonl``/``X.parquet`` when there is one,
    else its folder's ``meta.json`` (what `lightreasoner sample` writes)."""
    p = Path(samples)
    sidecar = p.with_name(p.with_suffix("").name + ".manifest.json")
    return sidecar if sidecar.is_file() or not (p.parent / layout.META).is_file() else p.parent / layout.META


def read_manifest(samples: str | Path) -> dict | None:
    """The manifest beside a local samples file (``None`` when either is missing)."""
    path = manifest_path(samples)
    if not Path(samples).exists() or not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON manifest ({e}); fix or remove it") from None
    return manifest if isinstance(manifest, dict) else {}


def check_complete(samples: str | Path, manifest: dict | None, records: int | None, force: bool = False) -> None:
    """Refuse samples whose manifest says the sampling run did not finish, or (``records`` given) whose record
    count differs from the manifest's: training on them would silently skip or double problems. ``--force``
    warns instead."""
    expected = ((manifest or {}).get("counts") or {}).get("problems")
    if (manifest or {}).get("complete") is False:
        problem = "says the sampling run did not finish"
    elif records is not None and isinstance(expected, int) and expected != records:
        problem = f"counts {expected} records, the file holds {records}"
    else:
        return
    msg = f"{samples}: its manifest {manifest_path(samples).name} {problem} (interrupted, or changed by another run)"
    if not force:
        raise InputError(msg + ". Rerun `lightreasoner sample` with the same command to finish it, or pass --force "
                               "to train on it anyway")
    logger.warning("%s (--force: training anyway)", msg)


def check_manifest(samples: str | Path, expert_fingerprint: str, force: bool = False) -> dict | None:
    """Refuse samples drawn from another expert (``--force``: warn instead); warn when there is no manifest."""
    manifest = read_manifest(samples)
    if manifest is None:
        logger.warning("no manifest beside %s (%s): cannot check that these samples came from this expert",
                       samples, manifest_path(samples).name)
        return None
    fp = (manifest.get("expert") or {}).get("fingerprint")
    if fp is None:
        logger.warning("%s names no expert fingerprint: cannot check that the samples came from this expert",
                       manifest_path(samples))
    elif fp != expert_fingerprint:
        spec = (manifest.get("expert") or {}).get("spec", "?")
        msg = (f"{samples} was sampled from expert {spec!r} ({fp}), but the expert being trained is "
               f"{expert_fingerprint}: soft labels only teach the model that produced them")
        if not force:
            raise InputError(msg + ". Train the expert the samples came from, or pass --force to train anyway.")
        logger.warning("%s (--force: training anyway)", msg)
    return manifest


def read_rows(source: str | Path, *, split: str = "train", skip_bad_rows: bool = False,
              stats: dict | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, row)`` from a JSONL file, a Parquet file or a hub dataset; ``where`` names file and line."""
    stats = stats if stats is not None else {}
    p = Path(source).expanduser()
    if p.is_file():
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            for i, row in enumerate(pq.read_table(p).to_pylist()):
                yield f"{p}:row {i + 1}", row
            return
        for n, row in iter_jsonl(p, skip_bad=skip_bad_rows, stats=stats):
            yield f"{p}:{n}", row
        return
    if p.exists() or str(source).startswith((".", "/", "~")) or str(source).endswith((".jsonl", ".parquet")):
        raise InputError(f"--samples {str(source)!r}: no such file (expected a .jsonl or .parquet file, or a hub "
                         f"dataset id)")
    import datasets

    try:
        ds = datasets.load_dataset(str(source), split=split)
    except Exception as e:  # network, missing dataset, bad split: one clear message
        raise InputError(f"--samples {str(source)!r}: could not load it as a hub dataset (split {split!r}): "
                         f"{e}") from None
    for i, row in enumerate(ds):
        yield f"{source}[{split}][{i}]", row


def _int_list(value: Any, where: str, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                       for v in value):
        raise InputError(f"{where}: {what} must be a list of integers")
    return list(value)


def _label(step: Any, where: str) -> tuple[list[int], list[float]]:
    ids = _int_list(step.get("token_ids"), where, "token_ids")
    w = step.get("weights")
    if not isinstance(w, (list, tuple)) or len(w) != len(ids) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in w):
        raise InputError(f"{where}: weights must be {len(ids)} finite non-negative numbers, one per token id")
    if not ids:
        raise InputError(f"{where}: a kept step needs at least one label token")
    if min(ids) < 0:
        raise InputError(f"{where}: token ids must be >= 0")
    if abs(sum(w) - 1.0) > 1e-2:
        raise InputError(f"{where}: label weights sum to {sum(w):.4f}, not 1")
    return ids, [float(x) for x in w]


@dataclass
class _Step:
    pos: int
    ids: list[int]
    weights: list[float]


def _windows(traj_id: str, tokens: list[int], steps: list[_Step], max_length: int,
             stats: dict) -> list[Trajectory]:
    """Cut a sequence into trajectories of at most ``max_length`` tokens, each ending at a kept step's position.

    A step at position ``p`` needs ``tokens[:p + 1]``. The last window keeps the end of the context; steps left
    before its start get their own window, ending at their last position (so no step is lost to truncation).
    """
    steps = sorted(steps, key=lambda s: s.pos)
    if steps and steps[0].pos < 0:
        lost = [s for s in steps if s.pos < 0]
        stats["dropped_steps"] = stats.get("dropped_steps", 0) + len(lost)
        steps = steps[len(lost):]
    out: list[Trajectory] = []
    while steps:
        end = steps[-1].pos + 1
        start = max(0, end - max_length)
        first = next(i for i, s in enumerate(steps) if s.pos >= start)
        inside, steps = steps[first:], steps[:first]
        if start > 0:
            stats["truncated_windows"] = stats.get("truncated_windows", 0) + 1
        suffix = f"#{len(out)}" if out or steps else ""
        out.append(Trajectory(traj_id + suffix, tokens[start:end], [s.pos - start for s in inside],
                              [s.ids for s in inside], [s.weights for s in inside]))
    return out[::-1]


def _records_to_steps(where: str, row: dict) -> tuple[list[int], list[_Step]]:
    """Our record -> (prompt + completion tokens, steps at absolute positions)."""
    prompt = _int_list(row.get("prompt_ids"), where, "prompt_ids")
    completion = _int_list(row.get("completion_ids"), where, "completion_ids")
    raw = row.get("steps")
    if not isinstance(raw, (list, tuple)):
        raise InputError(f"{where}: 'steps' must be a list of kept steps")
    steps, seen = [], set()
    for j, s in enumerate(raw):
        w = f"{where}: steps[{j}]"
        if not isinstance(s, dict) or not isinstance(s.get("pos"), int):
            raise InputError(f"{w}: each step needs an integer 'pos'")
        pos = s["pos"]
        if not 0 <= pos < len(completion):
            raise InputError(f"{w}: pos {pos} is outside the completion (0..{len(completion) - 1})")
        if pos in seen:
            raise InputError(f"{w}: pos {pos} appears twice")
        seen.add(pos)
        ids, weights = _label(s, w)
        steps.append(_Step(len(prompt) + pos - 1, ids, weights))
    return prompt + completion, steps


def _group_authors(items: list[tuple[str, str, list[int], list[float]]], head: str, tokenizer: Any,
                   question_id: str) -> list[tuple[str, list[int], list[_Step]]]:
    """The authors' steps of one question -> sequences whose token contexts nest (exact packing).

    Each step's context is ``tokenizer(head + prefix)`` as the authors build it; the step is predicted at its last
    token. Steps are placed, longest context first, on the first sequence that starts with their context.
    """
    enc = tokenizer([head + prefix for _, prefix, _, _ in items])["input_ids"]
    order = sorted(range(len(items)), key=lambda i: -len(enc[i]))
    seqs: list[tuple[list[int], dict[int, _Step]]] = []
    for i in order:
        ids = list(enc[i])
        pos = len(ids) - 1
        step = _Step(pos, items[i][2], items[i][3])
        for seq, steps in seqs:
            if pos not in steps and len(seq) >= len(ids) and seq[:len(ids)] == ids:
                steps[pos] = step
                break
        else:
            seqs.append((ids, {pos: step}))
    return [(f"{question_id}/{k}" if len(seqs) > 1 else question_id, seq, list(steps.values()))
            for k, (seq, steps) in enumerate(seqs)]


def load_training_examples(source: str | Path, tokenizer: Any, *, max_length: int = 2048, split: str = "train",
                           skip_bad_rows: bool = False, system_prompt: str = AUTHORS_SYSTEM_PROMPT,
                           force: bool = False) -> tuple[list[Trajectory], dict]:
    """Read sample records (ours or the authors'; JSONL, Parquet or hub) into trajectories, with counts.

    Returns ``(trajectories, stats)``; stats has ``format``, ``records``, ``records_without_steps``,
    ``kept_steps``, ``trajectories``, ``dropped_steps``, ``truncated_windows``, ``bad_rows``.
    Raises :class:`InputError` naming the file and line for malformed rows, for a trajectory id seen twice, for a
    file its manifest calls incomplete or counts differently (:func:`check_complete`; ``force``: warn), and for a
    source with no kept step.
    """
    stats: dict[str, Any] = {"format": None, "records": 0, "records_without_steps": 0, "dropped_steps": 0,
                             "truncated_windows": 0, "bad_rows": 0}
    trajs: list[Trajectory] = []
    authors: dict[str, list[tuple[str, str, list[int], list[float]]]] = {}
    seen_ids, manifest = {}, read_manifest(source)
    check_complete(source, manifest, None, force)  # before reading: an unfinished file may end in a torn line
    for where, row in read_rows(source, split=split, skip_bad_rows=skip_bad_rows, stats=stats):
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object per line")
        fmt = "records" if "prompt_ids" in row else "authors" if "prefix" in row and "prompt_id" in row else None
        if fmt is None:
            raise InputError(f"{where}: not a sample record: expected our fields (prompt_ids, completion_ids, "
                             f"steps) or the authors' (prompt_id, prefix, token_ids, weights)")
        if stats["format"] not in (None, fmt):
            raise InputError(f"{where}: {fmt} row in a file of {stats['format']} rows; use one format per file")
        stats["format"] = fmt
        stats["records"] += 1
        if fmt == "records":
            first = seen_ids.setdefault(str(row["id"]), where) if row.get("id") is not None else where
            if first != where:
                raise InputError(f"{source}: trajectory id {row['id']!r} appears twice, at {first} and {where} (two "
                                 f"sample runs writing one file?); keep one record per id, or rerun `lightreasoner "
                                 f"sample` into a new file")
            tokens, steps = _records_to_steps(where, row)
            if not steps:
                stats["records_without_steps"] += 1
                continue
            trajs += _windows(str(row.get("id", stats["records"])), tokens, steps, max_length, stats)
        else:
            q, prefix = row.get("prompt_id"), row.get("prefix")
            if not isinstance(q, str) or not isinstance(prefix, str):
                raise InputError(f"{where}: prompt_id (the question text) and prefix must be strings")
            authors.setdefault(q, []).append((where, prefix, *_label(row, where)))
    if authors:
        if getattr(tokenizer, "chat_template", None) is None:
            raise InputError(f"{source}: the authors' records need the expert tokenizer's chat template, which this "
                             f"tokenizer lacks")
        for qi, (question, items) in enumerate(authors.items()):
            head = tokenizer.apply_chat_template([{"role": "system", "content": system_prompt},
                                                  {"role": "user", "content": question}],
                                                 tokenize=False, add_generation_prompt=True)
            qid = "q" + hashlib.sha1(question.encode()).hexdigest()[:10]
            for tid, seq, steps in _group_authors(items, head, tokenizer, qid):
                trajs += _windows(tid, seq, steps, max_length, stats)
    stats["trajectories"] = len(trajs)
    stats["kept_steps"] = sum(t.n_steps for t in trajs)
    check_complete(source, manifest, stats["records"] + stats["bad_rows"], force)
    if stats["records"] == 0:
        raise InputError(f"{source}: no sample records (empty file?); run `lightreasoner sample` first or check "
                         f"the path")
    if not trajs:
        raise InputError(f"{source}: none of its {stats['records']} records has a kept step (is --beta too high "
                         f"for this pair?); nothing to train on")
    return trajs, stats


def check_label_range(trajectories: Sequence[Trajectory], vocab_rows: int) -> None:
    """Every label id must be an output row of the model."""
    for t in trajectories:
        top = max(max(ids) for ids in t.label_ids)
        if top >= vocab_rows:
            raise InputError(f"trajectory {t.id}: label token id {top} but the model has only {vocab_rows} output "
                             f"rows; were these samples made with another model family?")


# ----------------------------------------------------------------------------------------------------------------
# Plan: which kept steps go into which update
# ----------------------------------------------------------------------------------------------------------------


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

    Uses ``logits_to_keep=<bool mask>`` where the installed transformers supports it (so model-specific output
    scaling stays), else the decoder's hidden states gathered at kept positions and the output layer. No attention
    mask is passed: rows are right padded, so under the causal mask no real token sees a pad.
    """
    lm = _base_lm(model)
    if _BOOL_KEEP and _takes_logits_to_keep(type(lm)) and _bool_logits_to_keep_supported():
        return lm(input_ids=input_ids, logits_to_keep=keep, use_cache=False).logits
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    return lm.get_output_embeddings()(hidden[keep])


_BOOL_KEEP = True  # tests switch the fallback path on by setting this to False


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


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


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def apply_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Wrap ``model`` with a PEFT LoRA adapter (weights in float32 whatever the model's dtype)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets: Any = "all-linear" if tuple(cfg.lora_targets) == ("all-linear",) else list(cfg.lora_targets)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      bias="none", task_type=TaskType.CAUSAL_LM)
    try:
        peft_model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise ConfigError([f"--lora-targets {','.join(cfg.lora_targets)}: {e}"]) from None
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model


def make_accelerator(cfg: TrainConfig) -> Any:
    """An Accelerator for this run: bf16 autocast for ``--full`` where the hardware has bf16."""
    from accelerate import Accelerator

    device = models.default_device()
    mp = "no"
    if cfg.full:
        mp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(models.resolve_dtype(cfg.dtype, device), "no")
    # cpu=True lets plain `torchrun` on a machine without accelerators run DDP over gloo.
    acc = Accelerator(mixed_precision=mp, step_scheduler_with_optimizer=False,
                      cpu=device == "cpu")
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is not None:  # no dataloader is prepared: tell DeepSpeed the micro-batch and our clipping
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
        ds.deepspeed_config["gradient_accumulation_steps"] = 1
        if cfg.max_grad_norm is not None:
            ds.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm
    return acc


def linear_schedule(total: int, warmup: int = 0, constant: bool = False):
    """lr factor: linear warm-up over ``warmup`` updates, then linear decay to 0 at ``total`` (as transformers'),
    or (``constant``) the peak rate throughout."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1) if warmup else 1.0
        return 1.0 if constant else max(0.0, (total - step) / max(1, total - warmup))
    return factor


def data_fingerprint(trajs: Sequence[Trajectory]) -> str:
    h = hashlib.sha256()
    for t in trajs:
        h.update(f"{t.id}|{t.input_ids}|{t.positions}|{t.label_ids}|{t.label_weights}\n".encode())
    return "sha256:" + h.hexdigest()[:32]


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class MetricsLogger:
    """Every ``--log-every`` updates: one JSONL record (``metrics.jsonl``), TensorBoard and wandb (main process)."""

    def __init__(self, out: Path, cfg: TrainConfig, start: int, enabled: bool):
        self.path, self.enabled, self.tb, self.wb = out / "metrics.jsonl", enabled, None, None
        self._reset()
        if not enabled:
            return
        # A resumed run drops what an interrupted one logged after its last checkpoint.
        kept = [r for r in read_complete_jsonl(self.path) if r.get("update", 0) <= start]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)
            except ImportError:
                logger.warning("tensorboard is not installed; logging to metrics.jsonl only")
        if cfg.wandb:
            try:
                import wandb

                self.wb = wandb.init(project=cfg.wandb, config=to_dict(cfg), name=out.name, resume="allow")
            except ImportError:
                logger.warning("--wandb given but wandb is not installed (pip install wandb); skipping it")

    def _reset(self) -> None:
        self.loss, self.updates, self.steps, self.tokens, self.t0 = 0.0, 0, 0, 0, time.perf_counter()

    def add(self, loss: float, steps: int, tokens: int) -> None:
        self.loss, self.updates = self.loss + loss, self.updates + 1
        self.steps, self.tokens = self.steps + steps, self.tokens + tokens

    def flush(self, update: int, **extra: Any) -> None:
        """Write the mean loss and the throughput since the last flush, with ``extra`` (lr, grad norm, ...)."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rec = {"update": update, "loss": self.loss / max(1, self.updates), **extra,
               "kept_steps_per_s": self.steps / dt, "tokens_per_s": self.tokens / dt}
        self._reset()
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "update" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, update)
        if self.wb is not None:
            self.wb.log(rec, step=update)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def prepare_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Gradient checkpointing, no KV cache, then LoRA (or every weight trainable with ``--full``); train mode."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    if cfg.full:
        model.requires_grad_(True)
    else:
        model = apply_lora(model, cfg)
    return model.train()


def train_update(acc: Any, model: nn.Module, optimizer: Any, scheduler: Any, trajectories: Sequence[Trajectory],
                 update: Update, cfg: TrainConfig, pad_id: int) -> dict[str, float]:
    """One optimizer update on ``update``'s kept steps (this rank's share), then clip, step, schedule.

    Returns the update's global mean loss, the forwarded tokens (all ranks), the pre-clip gradient norm and the lr
    it used. A non-finite loss or gradient norm raises (:func:`check_finite`) before the caller writes anything.
    """
    world, rank = acc.num_processes, acc.process_index
    shards = [micro_batches(trajectories, shard_pieces(update.pieces, world, r), cfg.max_tokens_per_forward)
              for r in range(world)]
    mine, n_micro = shards[rank], max(len(s) for s in shards)  # every rank runs n_micro forwards
    loss_sum = torch.zeros((), device=acc.device)
    tokens = 0
    for i in range(n_micro):
        batch = collate(trajectories, mine[i], pad_id) if i < len(mine) else empty_batch(pad_id)
        last = i == n_micro - 1
        acc.sync_gradients = last  # DeepSpeed's accumulation boundary; the optimizer steps only when True
        with (contextlib.nullcontext() if last else acc.no_sync(model)), acc.autocast(), \
                attention_backends(acc.device):
            loss, _ = packed_loss(model, batch.to(acc.device))
            acc.backward(loss * (world / update.n_steps))  # sum / global kept steps; DDP averages over ranks
        loss_sum += loss.detach()
        tokens += batch.n_tokens
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm else float("inf"))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    totals = torch.stack([loss_sum.float(), torch.tensor(float(tokens), device=acc.device)])
    totals = acc.reduce(totals, reduction="sum") if world > 1 else totals
    norm = grad_norm if torch.is_tensor(grad_norm) else torch.tensor(math.nan if grad_norm is None else grad_norm)
    loss, n_tokens, norm_value = torch.cat([totals, norm.detach().float().reshape(1).to(totals.device)]).tolist()
    check_finite(update.index + 1, loss / update.n_steps, None if grad_norm is None else norm_value, cfg)
    return {"loss": loss / update.n_steps, "tokens": int(n_tokens), "lr": lr, "grad_norm": norm_value}


def check_finite(update: int, loss: float, grad_norm: float | None, cfg: TrainConfig) -> None:
    """Stop on a non-finite loss or gradient norm at ``update``: every later update and checkpoint would be NaN."""
    for what, value in (("loss", loss), ("gradient norm", grad_norm)):
        if value is not None and not math.isfinite(value):
            lora = "" if cfg.full else f" or LoRA scale (--lora-alpha {cfg.lora_alpha} / --lora-r {cfg.lora_r})"
            raise InputError(f"{what} is {value} at update {update}: the learning rate (--lr {cfg.lr}){lora} may be "
                             f"too large, or the samples hold non-finite labels. Nothing of this state was saved; "
                             f"lower --lr (or fix the samples) and train again")


def train(model: nn.Module, tokenizer: Any, trajectories: Sequence[Trajectory], cfg: TrainConfig,
          output_dir: str | Path, *, accelerator: Any = None, data_stats: dict | None = None,
          expert: dict | None = None) -> dict:
    """Train ``model`` (LoRA unless ``cfg.full``) on ``trajectories``; write the adapter and records to
    ``output_dir``; return the summary (``finished: False`` when ``cfg.stop_after`` cut the run short).

    ``model`` is modified in place (LoRA layers are injected). Resumes from ``output_dir``'s newest checkpoint
    with ``cfg.resume == "auto"``.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    out = Path(output_dir)
    acc = accelerator or make_accelerator(cfg)
    main_proc, world = acc.is_main_process, acc.num_processes
    fp = data_fingerprint(trajectories)
    if (out / "summary.json").is_file() and cfg.resume == "auto":
        ck.check_resumable(out, to_dict(cfg), RESULT_FIELDS, fp)
        logger.info("%s already holds a finished run; nothing to do", out)
        return read_json(out / "summary.json")
    found = ck.candidates(out, cfg.resume)
    ck.require_supported(acc.distributed_type, saves=bool(cfg.save_every or cfg.stop_after), resumes=bool(found))
    if found:
        ck.check_resumable(out, to_dict(cfg), RESULT_FIELDS, fp)
    plan = plan_updates([t.n_steps for t in trajectories], cfg.steps_per_update, max_steps=cfg.max_steps,
                        epochs=cfg.epochs, seed=cfg.seed)
    total = len(plan)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    if world > cfg.steps_per_update and main_proc:
        logger.warning("%d processes share %d kept steps per update: some run empty micro-batches", world,
                       cfg.steps_per_update)

    # Model, optimizer, schedule; only trainable weights go into checkpoints.
    set_seed(cfg.seed)
    model = prepare_model(model, cfg)
    wrapper = KeptLogitsLM(model)
    n_trainable = sum(p.numel() for p in wrapper.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in wrapper.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_schedule(total, cfg.warmup_steps, constant=cfg.lr_scheduler == "constant"))
    wrapper, optimizer = acc.prepare(wrapper, optimizer)

    # State carried across resumes.
    state: dict[str, Any] = {"update": 0, "kept_steps": 0, "forward_tokens": 0, "trajectory_forwards": 0,
                             "train_time_s": 0.0, "first_loss": None, "last_loss": None}
    ckpt = ck.resume(acc, acc.unwrap_model(wrapper), optimizer, scheduler, found,
                     explicit=cfg.resume not in ("auto", "none"))
    if ckpt is not None:
        state.update(ckpt.state)
    start, stop = state["update"], min(total, cfg.stop_after or total)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", {
            "config": to_dict(cfg), "data_fingerprint": fp, "data": data_stats or {}, "expert": expert or {},
            "world_size": world, "trainable_parameters": n_trainable, "updates": total,
            "environment": environment_info()})
        logger.info("%s: %d updates of %d kept steps over %d trajectories on %d process(es) (%s, %s), %d trainable "
                    "parameters%s", "full fine-tuning" if cfg.full else f"LoRA r {cfg.lora_r}", total,
                    cfg.steps_per_update, len(trajectories), world, str(acc.distributed_type).split(".")[-1],
                    acc.device, n_trainable, f"; resuming from {ckpt.folder} at update {start}" if ckpt else "")
    metrics = MetricsLogger(out, cfg, start, enabled=main_proc)

    # The loop.
    bar = tqdm(total=stop, initial=start, desc="train", unit="update", disable=not main_proc)
    t_run, time_before = time.perf_counter(), state["train_time_s"]
    for upd in plan[start:stop]:
        r = train_update(acc, wrapper, optimizer, scheduler, trajectories, upd, cfg, pad_id)
        done = state["update"] = upd.index + 1
        state["kept_steps"] += upd.n_steps
        state["forward_tokens"] += r["tokens"]
        state["trajectory_forwards"] += len(upd.pieces)
        state["first_loss"] = r["loss"] if state["first_loss"] is None else state["first_loss"]
        state["last_loss"] = r["loss"]
        state["train_time_s"] = time_before + time.perf_counter() - t_run
        metrics.add(r["loss"], upd.n_steps, r["tokens"])
        bar.update(1)
        bar.set_postfix(loss=f"{r['loss']:.4f}")
        if done % cfg.log_every == 0 or done == stop:
            metrics.flush(done, epoch=round(upd.epoch + _epoch_fraction(plan, upd, trajectories), 4), lr=r["lr"],
                          grad_norm=r["grad_norm"], peak_memory_gb=_peak_memory(acc.device) / 2**30,
                          kept_steps_seen=state["kept_steps"], elapsed_s=state["train_time_s"])
        if (cfg.save_every and done % cfg.save_every == 0 and done < total) or (done == stop < total):
            ck.save(acc, acc.unwrap_model(wrapper), optimizer, scheduler, out / f"step-{done:06d}", state,
                    keep=cfg.keep_checkpoints, adapter=None if cfg.full else  # every rank gets the state dict
                    (acc.unwrap_model(wrapper).lm, _lm_state(acc.get_state_dict(wrapper))))
    bar.close()
    metrics.close()
    if state["update"] < total:  # --stop-after: a checkpoint was left to resume from
        if main_proc:
            logger.info("stopped after update %d of %d; run again (--resume auto) to continue", state["update"],
                        total)
        return {"finished": False, **state}

    # Final outputs: adapter (or full model), tokenizer, summary.
    model.eval()
    full_state = acc.get_state_dict(wrapper)  # gathers shards under FSDP / ZeRO-3 (every rank must call it)
    summary = {
        "finished": True, "updates": total, "tuned_tokens": state["kept_steps"], "kept_steps_seen": state["kept_steps"],
        "trajectories": len(trajectories), "trajectory_forwards": state["trajectory_forwards"],
        "forward_tokens": state["forward_tokens"], "kept_steps_in_data": sum(t.n_steps for t in trajectories),
        "epochs": round(state["kept_steps"] / max(1, sum(t.n_steps for t in trajectories)), 4),
        "first_loss": state["first_loss"], "final_loss": state["last_loss"],
        "train_time_s": round(state["train_time_s"], 3), "wall_time_s": round(time.perf_counter() - t_start, 3),
        "world_size": world, "trainable_parameters": n_trainable, "mode": "full" if cfg.full else "lora",
        "model_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "peak_memory_gb": _peak_memory(acc.device) / 2**30, "data": data_stats or {}, "expert": expert or {},
    }
    if main_proc:
        acc.unwrap_model(wrapper).lm.save_pretrained(out, state_dict=_lm_state(full_state))  # PEFT: adapter only
        if not cfg.full:
            _set_adapter_base(out, expert)
        tokenizer.save_pretrained(out)
        ck.fsync_tree(out)  # the adapter and tokenizer files are on disk before summary.json marks the run done
        write_json(out / "summary.json", summary)
        logger.info("trained %d updates (%d kept steps) in %.1f s; loss %.4f -> %.4f; written to %s", total,
                    state["kept_steps"], state["train_time_s"], state["first_loss"], state["last_loss"], out)
    acc.wait_for_everyone()
    return summary


def _epoch_fraction(plan: Sequence[Update], upd: Update, trajs: Sequence[Trajectory]) -> float:
    """How far into its epoch ``upd`` ends (for logging)."""
    total = sum(t.n_steps for t in trajs)
    seen = sum(u.n_steps for u in plan[:upd.index + 1]) - upd.epoch * total
    return min(1.0, max(0.0, seen / total))


def _lm_state(state: dict) -> dict:
    """The LM's entries of a :class:`KeptLogitsLM` state dict, without the ``lm.`` prefix."""
    return {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}


def _set_adapter_base(out: Path, expert: dict | None) -> None:
    """Record the expert spec as the adapter's base model (PEFT's adapter_config.json)."""
    cfg_path = out / "adapter_config.json"
    if expert and expert.get("spec") and cfg_path.is_file():
        data = read_json(cfg_path)
        data["base_model_name_or_path"] = expert["spec"]
        write_json(cfg_path, data)


@writes_output("train", kind="folder")
def main(cfg: TrainConfig) -> int:
    """``lightreasoner train``: check the samples belong to the expert, read them, load the expert, train.

    The cheap checks come first (manifest fingerprint, then the samples with the tokenizer), so a wrong or
    malformed samples file fails before the model loads. One writer per output folder (:func:`utils.output_lock`,
    held on every rank).
    """
    acc = make_accelerator(cfg)
    ck.require_supported(acc.distributed_type, saves=bool(cfg.save_every or cfg.stop_after), resumes=False)
    src = models.resolve_source(cfg.expert, prepare=False)
    stage = layout.StageRun(cfg.output, identity(cfg), rerun=cfg.rerun and acc.is_main_process)
    if stage.done:
        logger.info("%s is complete for these settings; nothing to do", cfg.output)
        return 0
    with stage:
        return _train_stage(cfg, acc, src, stage)


def _train_stage(cfg: TrainConfig, acc: Any, src: models.ModelSource, stage: layout.StageRun) -> int:
    if src.kind != "hub":  # these fingerprints need no loaded model
        check_manifest(cfg.samples, models.fingerprint(src), cfg.force)
    tokenizer = models.load_tokenizer(cfg.expert, trust_remote_code=cfg.trust_remote_code)
    trajs, stats = load_training_examples(cfg.samples, tokenizer, max_length=cfg.max_length,
                                          split=cfg.samples_split, skip_bad_rows=cfg.skip_bad_rows,
                                          system_prompt=cfg.system_prompt, force=cfg.force)
    if acc.is_main_process:
        logger.info("%d trajectories, %d kept steps (%s format, %d records)", stats["trajectories"],
                    stats["kept_steps"], stats["format"], stats["records"])
    loaded = models.load_model(cfg.expert, dtype="float32" if cfg.full else cfg.dtype, device=str(acc.device),
                               trust_remote_code=cfg.trust_remote_code)
    if src.kind == "hub":
        check_manifest(cfg.samples, loaded.fingerprint, cfg.force)
    check_label_range(trajs, loaded.vocab_rows)
    if acc.is_main_process:
        stage.start()
    summary = train(loaded.model, loaded.tokenizer, trajs, cfg, cfg.output, accelerator=acc, data_stats=stats,
                    expert=loaded.describe())
    if not summary.get("finished", True):
        return 0 if cfg.stop_after else 1
    if acc.is_main_process:
        stage.finish(config=to_dict(cfg), counts={k: summary.get(k) for k in (
            "updates", "tuned_tokens", "trajectories", "kept_steps_in_data", "forward_tokens")},
            extra={"expert": loaded.describe(), "train_time_s": summary.get("train_time_s")})
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Merge
# ----------------------------------------------------------------------------------------------------------------


def merge_adapter(base: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """``base`` + LoRA adapter -> a plain transformers model with the adapter folded into its weights.

    The fold is done in float32 and each tensor goes back to its own dtype (a blanket ``.to(bf16)`` would also
    round float32 buffers such as rotary frequencies), so a bf16 model folded in memory equals the bf16
    checkpoint ``merge`` writes from a float32 load. PEFT freezes the base weights; the fold gives each parameter
    back its own ``requires_grad`` too, so the result is the base model with new weights and nothing else changed.
    """
    from peft import PeftModel

    dtypes = {n: t.dtype for n, t in [*base.named_parameters(), *base.named_buffers()]}
    trainable = {n: p.requires_grad for n, p in base.named_parameters()}
    merged = PeftModel.from_pretrained(base.float(), str(adapter_dir)).merge_and_unload()
    for n, t in [*merged.named_parameters(), *merged.named_buffers()]:
        t.data = t.data.to(dtypes.get(n, t.dtype))
    for n, p in merged.named_parameters():
        p.requires_grad_(trainable.get(n, p.requires_grad))
    return merged


def _stored_dtype(src: models.ModelSource | None) -> torch.dtype:
    if src is not None and src.kind in ("folder", "embedded") and (Path(src.path) / "config.json").is_file():
        cfg = read_json(Path(src.path) / "config.json")
        name = cfg.get("dtype") or cfg.get("torch_dtype")
        if name in ("float32", "bfloat16", "float16"):
            return getattr(torch, name)
    return torch.float32


@writes_output("merge", kind="folder", single_process=True)
def merge_main(cfg: MergeConfig) -> int:
    """``lightreasoner merge``: write base + adapter as one standalone model."""
    adapter = Path(cfg.adapter)
    models.resolve_source(cfg.expert, prepare=False)
    if not (adapter / "adapter_config.json").is_file():
        hint = " (it holds a full model: --full training needs no merge)" if (adapter / "config.json").is_file() \
            else ""
        raise InputError(f"--adapter {cfg.adapter}: no adapter_config.json{hint}; point to a lightreasoner train "
                         f"output folder")
    with layout.StageRun(cfg.output, merge_identity(cfg), rerun=cfg.rerun) as stage:
        if stage.done:
            logger.info("%s is complete for these inputs; nothing to do", cfg.output)
            return 0
        return _merge(cfg, adapter, stage)


def _merge(cfg: MergeConfig, adapter: Path, stage: layout.StageRun) -> int:
    loaded = models.load_model(cfg.expert, dtype="float32", device="cpu", trust_remote_code=cfg.trust_remote_code)
    trained_on = None
    if (adapter / "summary.json").is_file():
        trained_on = (read_json(adapter / "summary.json").get("expert") or {}).get("fingerprint")
    if trained_on not in (None, loaded.fingerprint):
        msg = f"the adapter was trained on {trained_on}, but --expert {cfg.expert} is {loaded.fingerprint}"
        if not cfg.force:
            raise InputError(msg + "; pass the expert it was trained on, or --force")
        logger.warning("%s (--force: merging anyway)", msg)
    merged = merge_adapter(loaded.model, adapter)
    dtype = _stored_dtype(loaded.source) if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    merged = merged.to(dtype)
    if getattr(merged.config, "quantization_config", None) is not None:  # a GGUF-loaded base
        del merged.config.quantization_config
    out = Path(cfg.output)
    stage.start()
    merged.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    for f in out.iterdir():
        if f.is_file():
            ck.fsync_file(f)
    stage.finish(config=to_dict(cfg), counts={"parameters": sum(p.numel() for p in merged.parameters())},
                 extra={"expert": loaded.describe(), "dtype": str(dtype).replace("torch.", "")})
    logger.info("merged %s + %s -> %s (%s)", cfg.expert, cfg.adapter, out, str(dtype).replace("torch.", ""))
    return 0
