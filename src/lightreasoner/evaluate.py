"""``lightreasoner eval``: zero-shot greedy pass@1 on the paper's math benchmarks, graded like Qwen2.5-Math.

The run follows ``/work/shared/EVAL_SPEC.md`` (the Qwen2.5-Math toolkit, prompt type ``qwen25-math-cot``):

- data in the toolkit's layout ``DIR/<name>/test.jsonl`` (rows get ``idx`` = position when they have none, are
  sorted by it, cut to ``--limit``; rows whose question is empty are skipped);
- the toolkit's raw ChatML prompt (``--prompt qwen25-math``) or the model's own chat template with the same system
  message (``--prompt chat``); ``--shots 5`` gives ``mmlu_stem`` the toolkit's five demos;
- greedy decoding, up to ``--max-new-tokens`` (2048), stopping at ``</s>``, ``<|im_end|>``, ``<|endoftext|>`` and
  at the EOS ids; the text is stripped and cut at the first stop string (spec section 2);
- grading by :mod:`lightreasoner.grading` (``grade_many``), accuracy = mean verdict x 100, one decimal; the average
  is the plain mean of the per-benchmark numbers.

Generation uses continuous batching (:func:`lightreasoner.generation.stream`): up to ``--batch-size`` rows decode
together, longest prompts first, and a finished row's slot is refilled from the waiting prompts, so the batch stays
full; ``--max-batch-tokens`` caps rows x (longest prompt + max new tokens) KV-cache tokens. Finished completions are
graded and appended to ``<output>/<benchmark>.jsonl`` (flushed and fsynced) as they come,
so a killed run continues where it stopped; at the end each file is rewritten in the benchmark's order.

Deviation from the toolkit: its tool-call continuation (running python code that the model wrote) is not done
here; model text never reaches ``eval``/``exec``. Completions that would have triggered it (no ``boxed`` and ending
with three backticks) are counted in the summary (``tool_call_skipped``).

``lightreasoner eval --compare RUN_A RUN_B`` pairs two output folders problem by problem and runs an exact
McNemar test per benchmark (:func:`compare_runs`, :func:`mcnemar_exact`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from . import data as shipped
from . import layout
from . import grading
from .config import ConfigError, flag, option, save_config, to_dict
from .models import DTYPES
from .utils import (InputError, atomic_write, JsonlAppender, environment_info, iter_jsonl, read_complete_jsonl, read_json,
                    write_json, write_jsonl, writes_output)

logger = logging.getLogger(__name__)

STOP_STRINGS = ("</s>", "<|im_end|>", "<|endoftext|>")
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PROMPT_TYPES = ("qwen25-math", "chat")
PAPER_BENCHMARKS: tuple[str, ...] = tuple(grading.BENCHMARKS)
ALL_BENCHMARKS: tuple[str, ...] = PAPER_BENCHMARKS + tuple(b for b in ("math500", "mawps") if b not in PAPER_BENCHMARKS)
SHOT_BENCHMARKS = ("mmlu_stem",)  # --shots applies here only (as Qwen's own sh/eval.sh runs it)
# Hub copies with the toolkit's rows and fields: (dataset id, config, split). Others need --data-dir.
HUB_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math": ("zwhe99/MATH", None, "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
}
# Fields whose change makes earlier completions in an output folder incomparable (checked on resume).
_IDENTITY_KEYS = ("model", "model_fingerprint", "adapter_fingerprint", "prompt", "shots", "max_new_tokens", "dtype")


@dataclass(frozen=True)
class EvalConfig:
    """Zero-shot greedy pass@1 on the paper's benchmarks, graded as the Qwen2.5-Math toolkit does.

    Writes one JSONL per benchmark, summary.json/.md and config.json into --output, and resumes there after a
    kill. --compare RUN_A,RUN_B instead compares two finished output folders with an exact McNemar test.
    """

    model: str | None = option(None, run_sets=True, help="model spec: an embedded name, a .gguf file, a "
                               "save_pretrained folder or a hub id (required unless --compare)")
    adapter: str | None = option(None, "a LoRA adapter folder folded into --model's weights for the evaluation",
                                 run_sets=True)
    benchmarks: tuple[str, ...] = option(PAPER_BENCHMARKS, "comma-separated benchmarks", choices=ALL_BENCHMARKS)
    data_dir: str | None = option(None, "folder in the toolkit's layout DIR/<name>/test.jsonl (e.g. the "
                                        "Qwen2.5-Math repo's evaluation/data); none: the copies shipped with "
                                        "lightreasoner (sources and licences in lightreasoner/data/PROVENANCE.md)")
    output: str | None = option(None, run_sets=True, result=False, help="output folder (required unless "
                                "--compare; with --compare, where to write compare.json/.md)")
    compare: tuple[str, ...] | None = option(None, run_sets=True, help="two finished eval folders RUN_A,RUN_B to "
                                             "compare instead of evaluating")
    prompt: str = option("qwen25-math", "prompt: the toolkit's raw qwen25-math-cot template, or the model's chat "
                                        "template with the same system message", choices=PROMPT_TYPES)
    shots: int = option(0, "few-shot demos for mmlu_stem (Qwen's sh/eval.sh uses 5; LightReasoner's script 0)")
    limit: int | None = option(None, "evaluate the first N problems of each benchmark")
    max_new_tokens: int = option(2048, "new tokens per completion (the toolkit's max_tokens_per_call)")
    batch_size: int = option(32, "most prompts decoded together (continuous batching: "
                                   "finished rows are replaced at once)")
    max_batch_tokens: int | None = option(65536, "most KV-cache tokens per batch: rows x (longest prompt + "
                                                 "max new tokens); bounds memory on long prompts")
    dtype: str = option("auto", "weights dtype (auto: bf16 where the hardware computes it natively)",
                        choices=DTYPES, run_sets=True)
    device: str | None = option(None, "cuda, cpu or mps; none: the best available", run_sets=True, result=False)
    seed: int = option(0, "random seed (decoding is greedy; kept for the record)", run_sets=True)
    grade_timeout: float = option(3.0, "seconds per equality check before it counts as wrong (toolkit: 3)")
    skip_bad_rows: bool = option(False, "skip benchmark rows without a usable question or gold (counted) instead "
                                        "of stopping")
    overwrite: bool = option(False, "discard results already in --output instead of resuming", result=False)
    rerun: bool = option(False, "evaluate again when --output holds an evaluation of other settings (records of "
                                "the same model, prompt and decoding are reused)", result=False, saved=False,
                         run_sets=True)

    def validate(self) -> list[str]:
        p: list[str] = []
        if self.compare is not None:
            if len(self.compare) != 2:
                p.append(f"--compare takes two run folders RUN_A,RUN_B, got {len(self.compare)}")
        else:
            if not self.model:
                p.append("--model is required (or --compare RUN_A,RUN_B)")
            if not self.output:
                p.append("--output is required (or --compare RUN_A,RUN_B)")
        n_demos = min((len(grading.FEW_SHOT.get(b, ())) for b in SHOT_BENCHMARKS), default=0)
        if not 0 <= self.shots <= n_demos:
            p.append(f"{flag('shots')} must be between 0 and {n_demos}, got {self.shots}")
        for name in ("limit", "max_new_tokens", "batch_size", "max_batch_tokens"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                p.append(f"{flag(name)} must be > 0, got {v}")
        if self.grade_timeout <= 0:
            p.append(f"{flag('grade_timeout')} must be > 0, got {self.grade_timeout}")
        if len(set(self.benchmarks)) != len(self.benchmarks) or not self.benchmarks:
            p.append(f"{flag('benchmarks')} must name each benchmark once, got {','.join(self.benchmarks) or 'none'}")
        return p


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None, *,
                   skip_bad_rows: bool = False, stats: dict | None = None) -> list[dict]:
    """Rows of ``DIR/<name>/test.jsonl`` (without ``data_dir``: the shipped copy, see :mod:`lightreasoner.data`)
    as the toolkit loads them, checked up front.

    Each row gets ``idx`` = its position when the file has none; rows are sorted by ``idx`` and cut to the first
    ``limit``. Every row is checked before any model loads (see :func:`_check_rows`): a bad one is an
    :class:`InputError` naming the file and line, or with ``skip_bad_rows`` is skipped and counted in
    ``stats['bad_rows']``. Returns the raw row dicts (not copied further; grading gets copies).
    """
    if name not in ALL_BENCHMARKS:
        raise InputError(f"--benchmarks: unknown benchmark {name!r}; choose from {', '.join(ALL_BENCHMARKS)}")
    stats = {} if stats is None else stats
    if data_dir is not None:
        path = Path(data_dir).expanduser() / name / "test.jsonl"
        if not path.is_file():
            raise InputError(f"--data-dir {data_dir}: no {name}/test.jsonl there; the folder must have the "
                             f"Qwen2.5-Math toolkit's layout DIR/<name>/test.jsonl (its evaluation/data)")
        where, numbered = str(path), list(iter_jsonl(path, skip_bad=skip_bad_rows, stats=stats))
    elif shipped.benchmark_file(name) is not None:
        path = shipped.benchmark_file(name)
        where, numbered = str(path), list(iter_jsonl(path, skip_bad=skip_bad_rows, stats=stats))
    else:
        where, numbered = f"{name} (hub)", list(enumerate(_load_hub(name), 1))
    rows = _check_rows(name, where, numbered, skip_bad_rows, stats)
    if rows and "idx" not in rows[0]:
        rows = [{"idx": i, **r} for i, r in enumerate(rows)]
    rows.sort(key=lambda r: r["idx"])
    return rows[:limit] if limit is not None else rows


def _row_problem(name: str, row: Any) -> str | None:
    """Why one benchmark row cannot be evaluated (no object, no question or gold the rules can read), or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "idx" in row and (not isinstance(row["idx"], int) or isinstance(row["idx"], bool)):
        return f"idx must be an integer, got {row['idx']!r}"
    try:
        grading.parse_gold(name, row)
        grading.parse_question(name, row)
    except Exception as e:  # noqa: BLE001 - any failure of the toolkit's readers on this row
        return f"no usable question or gold for {name} ({type(e).__name__}: {e})"
    return None


def _check_rows(name: str, where: str, numbered: Sequence[tuple[int, Any]], skip_bad_rows: bool,
                stats: dict) -> list[dict]:
    """The rows that can be evaluated; ``idx`` present in every row or in none, and never twice."""
    rows, lines, bad = [], [], []
    for n, row in numbered:
        problem = _row_problem(name, row)
        if problem is None:
            rows.append(row)
            lines.append(n)
        else:
            bad.append(f"{where}:{n}: {problem}")
    if bad and not skip_bad_rows:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"{bad[0]}{more}; fix or remove the row, or pass --skip-bad-rows")
    for b in bad:
        logger.warning("skipped: %s", b)
    stats["bad_rows"] = stats.get("bad_rows", 0) + len(bad)
    with_idx = [n for n, r in zip(lines, rows) if "idx" in r]
    if with_idx and len(with_idx) != len(rows):
        first = next(n for n, r in zip(lines, rows) if "idx" not in r)
        raise InputError(f"{where}:{first}: this row has no idx but others do; give every row an idx or none")
    seen: dict[int, int] = {}
    for n, r in zip(lines, rows):
        if "idx" in r and seen.setdefault(r["idx"], n) != n:
            raise InputError(f"{where}:{n}: idx {r['idx']} is also on line {seen[r['idx']]}; each problem needs "
                             f"its own idx")
    return rows


def _load_hub(name: str) -> list[dict]:
    hint = ("pass --data-dir DIR, a folder in the Qwen2.5-Math toolkit's layout DIR/<name>/test.jsonl (a checkout's "
            "evaluation/data)")
    if name not in HUB_DATASETS:
        raise InputError(f"no hub copy of {name!r} with the toolkit's rows is known; {hint}")
    repo, config, split = HUB_DATASETS[name]
    try:
        from datasets import load_dataset

        ds = load_dataset(repo, config, split=split)
    except Exception as e:  # offline, moved, ...
        raise InputError(f"{name}: could not load {repo} from the hub ({type(e).__name__}: {e}); {hint}") from None
    return [dict(r) for r in ds]


def example_id(example: Mapping[str, Any], position: int) -> str:
    return str(example.get("idx", position))


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def few_shot_input(question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The toolkit's user turn: demos ``q + "\\n" + a`` joined by blank lines, then a blank line and the question."""
    if not shots:
        return question
    return "\n\n".join(q + "\n" + a for q, a in shots) + "\n\n" + question


def benchmark_shots(benchmark: str, shots: int) -> list[tuple[str, str]]:
    """The first ``shots`` demos for ``benchmark`` (only the ones in :data:`SHOT_BENCHMARKS` take demos)."""
    if shots <= 0 or benchmark not in SHOT_BENCHMARKS:
        return []
    return list(grading.FEW_SHOT.get(benchmark, ()))[:shots]


def build_prompt(benchmark: str, example: Mapping[str, Any], tokenizer: Any = None, prompt_type: str = "qwen25-math",
                 shots: int = 0) -> str:
    """The prompt text for one example; ``""`` when its question is empty (the toolkit skips those).

    ``qwen25-math``: the toolkit's raw ChatML string (no tokenizer needed). ``chat``: the tokenizer's chat template
    over a system turn (the same system message) and one user turn, with the generation prompt.
    """
    question = grading.parse_question(benchmark, copy.deepcopy(dict(example)))
    if not question:
        return ""
    demos = benchmark_shots(benchmark, shots)
    if prompt_type == "qwen25-math":
        return grading.build_qwen25_math_prompt(question, demos)
    if prompt_type == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError(["--prompt chat: the tokenizer has no chat template; use --prompt qwen25-math"])
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": few_shot_input(question, demos)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ConfigError([f"--prompt: {prompt_type!r} is not one of {', '.join(PROMPT_TYPES)}"])


def encode_prompts(tokenizer: Any, prompts: Sequence[str], prompt_type: str = "qwen25-math") -> list[list[int]]:
    """Token ids of prompt texts. The raw template is encoded as vLLM does (the tokenizer's special tokens added,
    none for Qwen); a rendered chat template already holds them."""
    if not prompts:
        return []
    enc = tokenizer(list(prompts), add_special_tokens=prompt_type != "chat")["input_ids"]
    return [list(ids) for ids in enc]


# ---------------------------------------------------------------------------------------------------------------
# Generation with stop strings


def postprocess_completion(text: str, stop_strings: Sequence[str] = STOP_STRINGS) -> str:
    """Spec section 2: rstrip, strip; cut at the first stop string present and strip again (idempotent)."""
    text = text.rstrip().strip()
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    if cuts:
        text = text[:min(cuts)].strip()
    return text


def stop_token_ids(tokenizer: Any, model: Any = None, stop_strings: Sequence[str] = STOP_STRINGS) -> list[int]:
    """EOS ids: the tokenizer's EOS, the model's generation-config EOS, and each stop string that is one token."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    for s in stop_strings:
        enc = tokenizer.encode(s, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(int(enc[0]))
    return sorted(ids)


class StopChecker:
    """``stop(ids) -> matched stop string | None`` for :func:`generation.generate`, checked after every step.

    Cheap: a token can complete a stop string only if its own text holds the string's last character (a per-id
    cached test); only then the row's last few tokens are decoded (as vLLM does, special tokens skipped).
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = STOP_STRINGS):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.window = 2 * max((len(s) for s in self.stop_strings), default=0) + 8
        self._last_chars = {s[-1] for s in self.stop_strings if s}
        self._can_end: dict[int, bool] = {}

    def _could_end(self, tid: int) -> bool:
        hit = self._can_end.get(tid)
        if hit is None:
            text = self.tokenizer.decode([tid], skip_special_tokens=True)
            hit = self._can_end[tid] = any(c in text for c in self._last_chars)
        return hit

    def __call__(self, ids: Sequence[int]) -> str | None:
        if not ids or not self.stop_strings or not self._could_end(ids[-1]):
            return None
        tail = self.tokenizer.decode(list(ids[-self.window:]), skip_special_tokens=True)
        return next((s for s in self.stop_strings if s in tail), None)


@dataclass
class GenOutput:
    """One completion: post-processed ``text``, generated ``ids`` (with a final EOS id), and why it ended."""

    text: str
    ids: list[int]
    finish_reason: str  # eos | stop | length
    seconds: float = 0.0  # this prompt's share of the decoding wall time

    @property
    def new_tokens(self) -> int:
        return len(self.ids)


def batch_slots(lengths: Sequence[int], *, batch_size: int, max_new_tokens: int,
                max_batch_tokens: int | None = None) -> int:
    """Rows decoded together: ``batch_size``, fewer when rows x (longest prompt + ``max_new_tokens``) KV-cache
    tokens would exceed ``max_batch_tokens``; at least one."""
    slots = max(1, int(batch_size))
    if max_batch_tokens is not None and lengths:
        slots = min(slots, max(1, max_batch_tokens // (max(lengths) + max_new_tokens)))
    return slots


def iter_generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                  batch_size: int = 16, max_batch_tokens: int | None = None, temperature: float = 0.0,
                  seed: int | Sequence[int] | None = None, stop_strings: Sequence[str] = STOP_STRINGS,
                  eos_ids: Sequence[int] | None = None, flush_every: int | None = None,
                  refill: int | None = None) -> Iterator[tuple[list[int], list[GenOutput], float]]:
    """Decode prompts (token ids) with continuous batching; yield ``(indices, outputs, seconds)`` as they finish.

    ``indices`` point into ``prompts``; ``outputs[k]`` belongs to ``prompts[indices[k]]``; ``seconds`` is their
    share of the wall time (``outputs[k].seconds`` each). Finished outputs are yielded in groups of
    ``flush_every`` (default: a quarter of the batch), so a caller can grade and save them while decoding goes on.
    Greedy for ``temperature == 0``; with sampling, prompt ``i`` uses seed ``seed + i`` (or ``seed[i]``).
    ``refill`` is passed to :func:`~lightreasoner.generation.stream` (``refill = batch_size`` gives fixed batches).
    """
    from .generation import stream

    eos_ids = list(eos_ids) if eos_ids is not None else stop_token_ids(tokenizer, model, stop_strings)
    eos_set = set(eos_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    stop = StopChecker(tokenizer, stop_strings)
    slots = batch_slots([len(p) for p in prompts], batch_size=batch_size, max_new_tokens=max_new_tokens,
                        max_batch_tokens=max_batch_tokens)
    flush = max(1, slots // 4) if flush_every is None else max(1, flush_every)
    idx: list[int] = []
    outs: list[GenOutput] = []
    for i, c, secs in stream(model, prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                             batch_size=slots, temperature=temperature, seed=seed, stop=stop,
                             refill=refill):
        body = c.ids[:-1] if c.finish_reason == "eos" and c.ids and c.ids[-1] in eos_set else c.ids
        text = tokenizer.decode(body, skip_special_tokens=True)
        idx.append(i)
        outs.append(GenOutput(postprocess_completion(text, stop_strings), list(c.ids), c.finish_reason, secs))
        if len(idx) >= flush:
            yield idx, outs, sum(o.seconds for o in outs)
            idx, outs = [], []
    if idx:
        yield idx, outs, sum(o.seconds for o in outs)


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], **kw: Any) -> list[GenOutput]:
    """:func:`iter_generate` collected back into the prompts' order."""
    out: list[GenOutput | None] = [None] * len(prompts)
    for idx, outs, _ in iter_generate(model, tokenizer, prompts, **kw):
        for i, o in zip(idx, outs):
            out[i] = o
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def would_call_tool(completion: str) -> bool:
    """The toolkit's condition for another round with executed code (not done here): no ``boxed``, ends in ```."""
    return "boxed" not in completion and completion.endswith("```")


def summarize_records(benchmark: str, records: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """Per-benchmark figures from its records: accuracy = mean(correct) x 100 rounded to one decimal."""
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    new_tokens = sum(int(r.get("new_tokens", 0)) for r in records)
    seconds = sum(float(r.get("seconds", 0.0)) for r in records)
    return {
        "benchmark": benchmark, "n": n, "correct": correct,
        "accuracy": round(100.0 * correct / n, 1) if n else None,
        "truncated": sum(r.get("finish_reason") == "length" for r in records),
        "grade_errors": sum(r.get("error") is not None for r in records),
        "tool_call_skipped": sum(would_call_tool(r.get("completion", "")) for r in records),
        "new_tokens": new_tokens, "generation_seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / seconds, 1) if seconds > 0 else None,
        **extra,
    }


def evaluate_model(model: Any, tokenizer: Any, benchmark: str, examples: Sequence[Mapping[str, Any]], cfg: Any,
                   output_path: str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Generate, grade and summarise one benchmark with an in-memory model.

    ``cfg`` supplies ``prompt``, ``shots``, ``max_new_tokens``, ``batch_size``, ``max_batch_tokens`` and
    ``grade_timeout`` (an :class:`EvalConfig` does). With ``output_path`` each batch's records are appended there
    and records already present (same ids) are reused, so a killed run resumes; at the end the file holds exactly
    this selection's records in the examples' order. Returns :func:`summarize_records`'s dict plus ``records``
    (one per scored example: id, prompt, completion, pred, gold, correct, new_tokens, finish_reason, seconds,
    error).
    """
    items: list[tuple[str, Mapping[str, Any], str]] = []
    seen: set[str] = set()
    skipped = 0
    for pos, ex in enumerate(examples):
        prompt = build_prompt(benchmark, ex, tokenizer, cfg.prompt, cfg.shots)
        if not prompt:
            skipped += 1
            continue
        eid = example_id(ex, pos)
        if eid in seen:
            eid = f"{eid}-{pos}"
        seen.add(eid)
        items.append((eid, ex, prompt))
    if skipped:
        logger.info("%s: skipped %d examples with an empty question (as the toolkit does)", benchmark, skipped)

    done: dict[str, dict] = {}
    extra: dict[str, dict] = {}
    path = Path(output_path) if output_path is not None else None
    if path is not None:
        # Records outside this selection (say, of an earlier larger --limit) are kept aside in
        # <benchmark>.extra.jsonl and reused when a later selection includes them again.
        wanted = {eid for eid, _, _ in items}
        for r in read_complete_jsonl(extra_path(path)) + read_complete_jsonl(path):
            (done if r.get("id") in wanted else extra)[r["id"]] = r
        if extra:
            logger.info("%s: %d finished records are outside this selection; kept in %s", path, len(extra),
                        extra_path(path))
    todo = [it for it in items if it[0] not in done]
    if done:
        logger.info("%s: resuming, %d of %d already done", benchmark, len(done), len(items))

    if todo:
        from tqdm.auto import tqdm

        n_right = sum(bool(r["correct"]) for r in done.values())
        bar = tqdm(total=len(items), initial=len(done), desc=benchmark, disable=not progress, dynamic_ncols=True)
        appender = JsonlAppender(path) if path is not None else None
        try:
            ids = encode_prompts(tokenizer, [p for _, _, p in todo], cfg.prompt)
            for idx, outs, secs in iter_generate(model, tokenizer, ids, max_new_tokens=cfg.max_new_tokens,
                                                 batch_size=cfg.batch_size, max_batch_tokens=cfg.max_batch_tokens):
                batch = [todo[i] for i in idx]
                grades = grading.grade_many(benchmark, [copy.deepcopy(dict(ex)) for _, ex, _ in batch],
                                            [o.text for o in outs], timeout=cfg.grade_timeout, progress=False)
                recs = []
                for (eid, _, prompt), o, g in zip(batch, outs, grades):
                    recs.append({"id": eid, "prompt": prompt, "completion": o.text, "pred": g.pred,
                                 "gold": g.gold, "correct": bool(g.correct), "new_tokens": o.new_tokens,
                                 "finish_reason": o.finish_reason, "seconds": round(o.seconds, 4),
                                 "error": None if g.error is None else str(g.error)})
                if appender is not None:
                    appender.write_many(recs)
                for r in recs:
                    done[r["id"]] = r
                    n_right += r["correct"]
                bar.update(len(recs))
                bar.set_postfix(acc=f"{100.0 * n_right / len(done):.1f}")
        finally:
            bar.close()
            if appender is not None:
                appender.close()

    records = [done[eid] for eid, _, _ in items]
    if path is not None:
        if extra:
            write_jsonl(extra_path(path), list(extra.values()))
        write_jsonl(path, records)
        if not extra:
            extra_path(path).unlink(missing_ok=True)
    summary = summarize_records(benchmark, records, skipped_empty=skipped)
    summary["records"] = records
    return summary


def extra_path(path: Path) -> Path:
    """Where an evaluation keeps finished records that are outside its current selection."""
    return path.with_name(path.stem + ".extra.jsonl")


def overall_summary(per_benchmark: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The run's figures: per-benchmark summaries (without records) and the plain mean of their accuracies."""
    rows = {b: {k: v for k, v in s.items() if k != "records"} for b, s in per_benchmark.items()}
    accs = [s["accuracy"] for s in rows.values() if s["accuracy"] is not None]
    tokens = sum(s["new_tokens"] for s in rows.values())
    secs = sum(s["generation_seconds"] for s in rows.values())
    return {"benchmarks": rows, "order": list(rows),
            "average": round(statistics.fmean(accs), 1) if accs else None,
            "totals": {"n": sum(s["n"] for s in rows.values()), "correct": sum(s["correct"] for s in rows.values()),
                       "truncated": sum(s["truncated"] for s in rows.values()), "new_tokens": tokens,
                       "generation_seconds": round(secs, 3),
                       "tokens_per_second": round(tokens / secs, 1) if secs > 0 else None}}


def summary_markdown(summary: Mapping[str, Any], title: str = "Evaluation") -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = [f"# {title}", ""]
    for key in ("model", "adapter", "prompt", "shots", "max_new_tokens", "dtype"):
        if summary.get(key) is not None:
            lines.append(f"- {key}: `{summary[key]}`")
    lines += ["", "| benchmark | n | correct | accuracy | truncated | new tokens | gen. seconds | tokens/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b, s in summary["benchmarks"].items():
        lines.append(f"| {b} | {s['n']} | {s['correct']} | {f(s['accuracy'])} | {s['truncated']} | "
                     f"{s['new_tokens']} | {f(s['generation_seconds'])} | {f(s['tokens_per_second'])} |")
    t = summary["totals"]
    lines.append(f"| **average** | {t['n']} | {t['correct']} | **{f(summary['average'])}** | {t['truncated']} | "
                 f"{t['new_tokens']} | {f(t['generation_seconds'])} | {f(t['tokens_per_second'])} |")
    skipped = {b: s["tool_call_skipped"] for b, s in summary["benchmarks"].items() if s.get("tool_call_skipped")}
    if skipped:
        lines += ["", f"Completions that would have run the toolkit's code continuation (not done here): {skipped}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# CLI


def file_fingerprint(folder: str | Path, patterns: Sequence[str] = ("adapter_config.json", "*.safetensors",
                                                                     "*.bin")) -> str:
    """SHA-256 over the named files of a (small) folder, e.g. a LoRA adapter."""
    h = hashlib.sha256()
    folder = Path(folder)
    for pat in patterns:
        for f in sorted(folder.glob(pat)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()


def load_adapter(model: Any, adapter: str | Path) -> Any:
    """``model`` with a LoRA adapter folded into its weights, in eval mode.

    The fold is ``lightreasoner merge``'s (:func:`train.merge_adapter`: float32, then each tensor's dtype), so an
    adapter evaluates exactly like its merged checkpoint, and costs nothing per generated token. A model whose
    weights are not all floating point (quantized) keeps the adapter as a peft wrapper instead.
    """
    from peft import PeftModel

    from .adapters import merge_adapter

    p = Path(adapter).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise InputError(f"--adapter {adapter}: no adapter_config.json there; pass a folder written by "
                         f"`lightreasoner train` (peft save_pretrained)")
    if not all(w.is_floating_point() for w in model.parameters()):
        return PeftModel.from_pretrained(model, str(p), is_trainable=False).eval()
    return merge_adapter(model, p).eval()


def data_inputs(cfg: EvalConfig) -> dict[str, str]:
    """Each benchmark's data fingerprint: the content hash of the file it is read from (or the hub id)."""
    out = {}
    for b in cfg.benchmarks:
        path = Path(cfg.data_dir).expanduser() / b / "test.jsonl" if cfg.data_dir else shipped.benchmark_file(b)
        out[b] = layout.file_hash(path) if path is not None and path.is_file() else f"hub:{HUB_DATASETS.get(b)}"
    return out


def identity(cfg: EvalConfig, **inputs: Any) -> dict:
    """The evaluation stage's identity: the model (and adapter) fingerprints, each benchmark's data, the settings."""
    found = {"model": lambda: layout.model_input(cfg.model),  # type: ignore[arg-type]
             "adapter": lambda: (layout.output_fingerprint(cfg.adapter) or file_fingerprint(cfg.adapter))
             if cfg.adapter else None,
             "data_dir": lambda: data_inputs(cfg)}
    return layout.stage_identity("eval", cfg, {k: inputs.get(k) or f() for k, f in found.items()})


def _check_adapter(cfg: EvalConfig) -> str | None:
    """The ``--adapter``'s fingerprint, after checking (before any model loads) that it is an adapter and, when
    ``--model`` is local, that it was trained on that model."""
    if not cfg.adapter:
        return None
    from .models import fingerprint, resolve_source

    p = Path(cfg.adapter).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise InputError(f"--adapter {cfg.adapter}: no adapter_config.json there; pass a folder written by "
                         f"`lightreasoner train` (peft save_pretrained)")
    src = resolve_source(cfg.model, prepare=False)  # type: ignore[arg-type]
    if src.kind != "hub":
        _check_adapter_base(cfg, fingerprint(src))
    return file_fingerprint(p)


def _check_adapter_base(cfg: EvalConfig, model_fingerprint: str) -> None:
    """Refuse an adapter whose training summary names another base model than ``--model``."""
    summary = Path(cfg.adapter).expanduser() / "summary.json"  # type: ignore[arg-type]
    trained_on = (read_json(summary).get("expert") or {}).get("fingerprint") if summary.is_file() else None
    if trained_on not in (None, model_fingerprint):
        raise InputError(f"--adapter {cfg.adapter} was trained on the model {trained_on}, but --model {cfg.model} "
                         f"is {model_fingerprint}; pass the --model it was trained on")


def _check_output(out: Path, identity: Mapping[str, Any], overwrite: bool, rerun: bool = False) -> None:
    """Keep the records in ``out`` only if they were made the way this evaluation makes them (same model,
    adapter, prompt, decoding): they are then reused, not generated again. Otherwise they are discarded when
    ``overwrite`` or ``rerun`` says so, else refused."""
    cfg_file = out / "config.json"
    old = read_json(cfg_file).get("identity", {}) if cfg_file.exists() else None
    diffs = [f"{k}: {old.get(k)!r} there, {identity.get(k)!r} now" for k in _IDENTITY_KEYS
             if old is not None and old.get(k) != identity.get(k)]
    if old is None and any(out.glob("*.jsonl")):
        diffs = ["JSONL files without the config.json that says how they were made"]
    if overwrite or (rerun and diffs):
        for f in [cfg_file, out / "summary.json", out / "summary.md"] + [
                f for b in ALL_BENCHMARKS for f in (out / f"{b}.jsonl", extra_path(out / f"{b}.jsonl"))]:
            f.unlink(missing_ok=True)
        return
    if diffs:
        raise ConfigError([f"--output {out} holds results of a different evaluation ({'; '.join(diffs)}); "
                           f"pass --rerun to discard them or choose another --output"])


@writes_output("eval", kind="folder", single_process=True)
def main(cfg: EvalConfig) -> int:
    """``lightreasoner eval``: evaluate a model (optionally with a LoRA adapter), or compare two runs."""
    if cfg.compare is not None:
        return compare_main(cfg)
    from .models import resolve_source

    resolve_source(cfg.model, prepare=False)  # type: ignore[arg-type]  # a mistyped path fails here, not later
    keep = () if cfg.overwrite else ("*.jsonl", "config.json")  # records are checked by _check_output
    with layout.StageRun(cfg.output, identity(cfg), rerun=cfg.rerun or cfg.overwrite,  # type: ignore[arg-type]
                         keep=keep) as stage:
        if stage.done:
            logger.info("%s is complete for these settings; nothing to do", cfg.output)
            return 0
        return _evaluate(cfg, stage)


def _evaluate(cfg: EvalConfig, stage: layout.StageRun) -> int:
    """Evaluate into a claimed stage folder (records of the same model, prompt and decoding resume)."""
    from .models import load_model

    t0 = time.perf_counter()
    out = Path(cfg.output)  # type: ignore[arg-type]
    bad_rows: dict[str, dict] = {}
    data = {b: load_benchmark(b, cfg.data_dir, cfg.limit, skip_bad_rows=cfg.skip_bad_rows,
                              stats=bad_rows.setdefault(b, {})) for b in cfg.benchmarks}  # before the model
    adapter_fp = _check_adapter(cfg)
    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)  # type: ignore[arg-type]
    model, tokenizer = loaded.model, loaded.tokenizer
    if cfg.adapter:
        if loaded.source is not None and loaded.source.kind == "hub":
            _check_adapter_base(cfg, loaded.fingerprint)
        model = load_adapter(model, cfg.adapter)
    # The resolved path is part of the identity too (besides the content fingerprint), so results of another
    # checkpoint are never resumed into this folder.
    spec_path = Path(cfg.model).expanduser()  # type: ignore[arg-type]
    record_identity = {"model": str(spec_path.resolve()) if spec_path.exists() else cfg.model,
                "model_fingerprint": loaded.fingerprint, "adapter_fingerprint": adapter_fp, "prompt": cfg.prompt,
                "shots": cfg.shots, "max_new_tokens": cfg.max_new_tokens,
                "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    stage.start()
    _check_output(out, record_identity, cfg.overwrite, cfg.rerun)
    # A summary describes a finished evaluation. Until this one finishes there is none: an old summary (say of a
    # smaller --limit) must not make an interrupted run look complete. The records it was built from are kept.
    for f in (out / "summary.json", out / "summary.md"):
        f.unlink(missing_ok=True)
    eos_ids = stop_token_ids(tokenizer, model)
    save_config(cfg, out / "config.json", extra={
        "identity": record_identity, "model": loaded.describe(), "adapter": cfg.adapter, "stop_strings": list(STOP_STRINGS),
        "eos_ids": eos_ids, "examples": {b: len(v) for b, v in data.items()}, "environment": environment_info()})

    results = {}
    for b, examples in data.items():
        results[b] = evaluate_model(model, tokenizer, b, examples, cfg, out / f"{b}.jsonl")
        logger.info("%s: %s%% of %d (%d truncated)", b, results[b]["accuracy"], results[b]["n"],
                    results[b]["truncated"])
    summary = overall_summary(results)
    summary.update({"model": cfg.model, "model_fingerprint": loaded.fingerprint, "adapter": cfg.adapter,
                    "prompt": cfg.prompt, "shots": cfg.shots, "max_new_tokens": cfg.max_new_tokens,
                    "dtype": record_identity["dtype"], "limit": cfg.limit,
                    "bad_rows_skipped": {b: st.get("bad_rows", 0) for b, st in bad_rows.items()},
                    "wall_seconds": round(time.perf_counter() - t0, 3)})
    write_json(out / "summary.json", summary)
    md = summary_markdown(summary, title=f"Evaluation of {cfg.model}" + (f" + {cfg.adapter}" if cfg.adapter else ""))
    atomic_write(out / "summary.md", md)
    stage.finish(config=to_dict(cfg), counts={b: {k: r[k] for k in ("n", "correct", "accuracy")}
                                              for b, r in results.items()},
                 extra={"model": loaded.describe(), "adapter": cfg.adapter})
    print(md)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Comparing two runs


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: a binomial(b + c, 1/2) test on the discordant pairs ``b`` and ``c``.

    ``p = min(1, 2 * P(X <= min(b, c)))``; ``1.0`` when there are no discordant pairs.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_change_ci(a_only: int, b_only: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% interval (Wald, paired) for the accuracy change B - A, in points, from the discordant counts.

    The change is ``d = (b_only - a_only) / n``; for paired right/wrong outcomes its variance is
    ``((a_only + b_only) / n - d**2) / n``. Returns ``(low, high)`` rounded to one decimal.
    """
    if n <= 0:
        raise ValueError(f"need at least one paired problem, got n = {n}")
    d = (b_only - a_only) / n
    half = z * math.sqrt(max((a_only + b_only) / n - d * d, 0.0) / n)
    return round(100 * (d - half), 1), round(100 * (d + half), 1)


def load_run(run: str | Path) -> dict[str, dict[str, bool]]:
    """``{benchmark: {id: correct}}`` from an eval output folder's ``<benchmark>.jsonl`` files."""
    folder = Path(run)
    if not folder.is_dir():
        raise InputError(f"--compare: {run} is not a folder")
    out: dict[str, dict[str, bool]] = {}
    for b in ALL_BENCHMARKS:
        f = folder / f"{b}.jsonl"
        if f.exists():
            out[b] = {str(r["id"]): bool(r["correct"]) for r in read_complete_jsonl(f)}
    if not out:
        raise InputError(f"--compare: {run} holds no <benchmark>.jsonl files of `lightreasoner eval`")
    return out


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """Pair two eval runs problem by problem, per benchmark both hold.

    For each benchmark: ``n`` paired problems (ids in both), accuracies of A and B on them, ``a_only`` (A right,
    B wrong), ``b_only`` (B right, A wrong), and the exact McNemar ``p_value``. ``all`` pools every pair;
    ``average`` is the mean of the per-benchmark accuracies. Ids in only one run are counted, not paired.
    """
    a, b = load_run(run_a), load_run(run_b)
    rows: dict[str, dict[str, Any]] = {}
    pooled = {"n": 0, "a_right": 0, "b_right": 0, "a_only": 0, "b_only": 0}
    for name in ALL_BENCHMARKS:
        if name not in a or name not in b:
            continue
        ids = [i for i in a[name] if i in b[name]]
        if not ids:
            continue
        ar = sum(a[name][i] for i in ids)
        br = sum(b[name][i] for i in ids)
        ao = sum(a[name][i] and not b[name][i] for i in ids)
        bo = sum(b[name][i] and not a[name][i] for i in ids)
        n = len(ids)
        rows[name] = {"n": n, "acc_a": round(100 * ar / n, 1), "acc_b": round(100 * br / n, 1),
                      "delta": round(100 * (br - ar) / n, 1), "a_only": ao, "b_only": bo,
                      "p_value": mcnemar_exact(ao, bo), "delta_ci95": paired_change_ci(ao, bo, n),
                      "unpaired_a": len(a[name]) - n,
                      "unpaired_b": len(b[name]) - n}
        for k, v in (("n", n), ("a_right", ar), ("b_right", br), ("a_only", ao), ("b_only", bo)):
            pooled[k] += v
    if not rows:
        raise InputError(f"--compare: {run_a} and {run_b} share no benchmark problems")
    mean_a = statistics.fmean(r["acc_a"] for r in rows.values())
    mean_b = statistics.fmean(r["acc_b"] for r in rows.values())
    return {"run_a": str(run_a), "run_b": str(run_b), "benchmarks": rows,
            "average": {"acc_a": round(mean_a, 1), "acc_b": round(mean_b, 1), "delta": round(mean_b - mean_a, 1)},
            "all": {**pooled, "p_value": mcnemar_exact(pooled["a_only"], pooled["b_only"]),
                    "delta_ci95": paired_change_ci(pooled["a_only"], pooled["b_only"], pooled["n"])},
            "only_in_a": sorted(set(a) - set(b)), "only_in_b": sorted(set(b) - set(a))}


def compare_markdown(cmp: Mapping[str, Any]) -> str:
    lines = [f"# {cmp['run_a']} (A) vs {cmp['run_b']} (B)", "",
             "| benchmark | n | A | B | B - A | 95% CI | A right only | B right only | McNemar p |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in cmp["benchmarks"].items():
        lo, hi = r["delta_ci95"]
        lines.append(f"| {name} | {r['n']} | {r['acc_a']:.1f} | {r['acc_b']:.1f} | {r['delta']:+.1f} | "
                     f"{lo:+.1f} .. {hi:+.1f} | {r['a_only']} | {r['b_only']} | {r['p_value']:.3g} |")
    av, al = cmp["average"], cmp["all"]
    lo, hi = al["delta_ci95"]
    lines.append(f"| **average** | {al['n']} | {av['acc_a']:.1f} | {av['acc_b']:.1f} | {av['delta']:+.1f} | "
                 f"{lo:+.1f} .. {hi:+.1f} (pooled) | {al['a_only']} | {al['b_only']} | {al['p_value']:.3g} |")
    lines += ["", "p: exact two-sided McNemar test on the problems one run got right and the other wrong; 95% CI: "
                  "paired Wald interval of B - A in points (the average row pools all problems)."]
    for key, who in (("only_in_a", "A"), ("only_in_b", "B")):
        if cmp[key]:
            lines.append(f"Only in {who}: {', '.join(cmp[key])}.")
    return "\n".join(lines) + "\n"


def compare_main(cfg: EvalConfig) -> int:
    run_a, run_b = cfg.compare  # type: ignore[misc]
    cmp = compare_runs(run_a, run_b)
    md = compare_markdown(cmp)
    print(md)
    if cfg.output:
        out = Path(cfg.output)
        write_json(out / "compare.json", cmp)
        atomic_write(out / "compare.md", md)
    return 0


__all__ = [
    "EvalConfig", "main", "evaluate_model", "build_prompt", "encode_prompts", "few_shot_input", "load_benchmark",
    "iter_generate", "generate_texts", "batch_slots", "paired_change_ci", "StopChecker", "stop_token_ids", "postprocess_completion",
    "GenOutput", "summarize_records", "overall_summary", "compare_runs", "mcnemar_exact", "load_run",
    "STOP_STRINGS", "SYSTEM_PROMPT", "PAPER_BENCHMARKS", "ALL_BENCHMARKS",
]
