"""Training data: sample records -> :class:`Trajectory` objects (token sequences and the kept steps on them).

Two input formats, one result:

- **ours** (``lightreasoner sample``): one record per problem, ``prompt_ids`` + ``completion_ids`` and its kept
  ``steps`` (``pos`` in the completion, a sparse soft label ``token_ids``/``weights``);
- **the authors'** per-step rows (``prompt_id`` = the question text, ``prefix`` = the decoded completion so far,
  ``token_ids``/``weights``). They are regrouped by question: each step's context is rebuilt as their trainer does
  (:func:`prompts.chat_text`: chat template, system :data:`prompts.DEFAULT_SYSTEM_PROMPT`, generation prompt; +
  prefix text, re-tokenized), and steps whose token contexts are prefixes of one another share one sequence, so
  packing them is exact.

A context longer than ``max_length`` keeps its end: a trajectory is cut into windows that each end at a kept step
and hold at most ``max_length`` tokens, so every kept step survives (a step with no token before it is dropped and
counted). Files are read from JSONL, Parquet or the hub (:func:`read_rows`).

Checks, each an :class:`InputError` naming the file and line: malformed rows and labels, a trajectory id seen
twice, a file its manifest calls unfinished or counts differently (:func:`check_complete`), samples drawn from
another expert (:func:`check_manifest`), token ids beyond the model's vocabulary (:func:`check_token_range`).

Python use::

    trajs, stats = load_training_examples("samples.jsonl", tokenizer)
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from . import layout
from . import hub
from .prompts import DEFAULT_SYSTEM_PROMPT, chat_text
from .utils import InputError, iter_jsonl, read_json

logger = logging.getLogger(__name__)

MAX_LENGTH = 2048  # longest context in tokens (longer ones keep their end)


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
    """The manifest beside a local samples file (``None`` when either is missing). A stage folder whose sampling
    started but has not finished (``.started.json`` and no ``meta.json``) reads as ``{"complete": False}``."""
    path = manifest_path(samples)
    if not Path(samples).exists():
        return None
    if not path.is_file():
        started = Path(samples).parent / layout.STARTED
        return {"complete": False} if started.is_file() else None
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
    where = manifest_path(samples)
    if not where.is_file():
        where = Path(samples).parent / layout.STARTED
    msg = f"{samples}: its manifest {where.name} {problem} (interrupted, or changed by another run)"
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
    ds = hub.load_dataset("--samples", str(source), None, split, "pass a local samples file")
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
    total = math.fsum(w)
    if abs(total - 1.0) > 1e-2:
        raise InputError(f"{where}: label weights sum to {total:.4f}, not 1")
    return ids, [float(x) / total for x in w]  # rounding in the file (within 1%) must not scale the step's loss


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


def load_training_examples(source: str | Path, tokenizer: Any, *, max_length: int = MAX_LENGTH, split: str = "train",
                           skip_bad_rows: bool = False, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
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
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(f"{source}: the authors' records need the expert tokenizer's chat template, which this "
                             f"tokenizer lacks")
        for qi, (question, items) in enumerate(authors.items()):
            head = chat_text(tokenizer, system_prompt, question)
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


def check_token_range(trajectories: Sequence[Trajectory], vocab_rows: int) -> None:
    """Every input and label id must be a row of the model (``vocab_rows``: its output rows)."""
    for t in trajectories:
        for what, top in (("input", max(t.input_ids)), ("label", max(max(ids) for ids in t.label_ids))):
            if top >= vocab_rows:
                raise InputError(f"trajectory {t.id}: {what} token id {top} but the model has only {vocab_rows} "
                                 f"rows; were these samples made with another model family?")


def data_fingerprint(trajs: Sequence[Trajectory]) -> str:
    """The trajectories' content hash: a resumed run must train on the same data."""
    h = hashlib.sha256()
    for t in trajs:
        h.update(f"{t.id}|{t.input_ids}|{t.positions}|{t.label_ids}|{t.label_weights}\n".encode())
    return "sha256:" + h.hexdigest()[:32]
