"""The benchmark table: one entry per benchmark (its rows' fields, gold, grading rules, prompt facts, hub copy),
and loading a benchmark's rows as the Qwen2.5-Math toolkit does, checked up front.

Rows come in the toolkit's layout ``DIR/<name>/test.jsonl`` (``--data-dir``), else from the copies shipped with
the package (:mod:`lightreasoner.data`), else from a hub copy with the toolkit's rows. Rows get ``idx`` = their
position when they have none, are sorted by it and cut to ``limit``. Questions and golds are read by
:mod:`lightreasoner.grading` (the toolkit's readers, rule by rule); the prompt around a question comes from
:mod:`lightreasoner.prompts`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import data as shipped
from . import hub
from . import layout
from .config import ConfigError
from .grading_data import MMLU_STEM_DEMOS
from .prompts import BOXED_SYSTEM_PROMPT, PROMPT_TYPES, build_qwen25_math_prompt, chat_text, few_shot_input
from .utils import InputError, iter_jsonl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: what its rows hold and how it is prompted and graded.

    ``rules``: the toolkit data name whose readers and grading rules apply. ``fields``: the fields every row needs
    (the question is read from ``question``; a row without one is skipped as an empty question, as the toolkit
    does). ``demos``: few-shot demos ``(question, answer)``; ``--shots`` applies only where there are some.
    ``hub``: a hub copy with the toolkit's rows, ``(dataset id, config, split)``.
    """

    name: str
    rules: str
    in_paper: bool
    question: str
    gold: str
    fields: tuple[str, ...]
    demos: tuple[tuple[str, str], ...] = ()
    hub: tuple[str, str | None, str] | None = None


_MATH_GOLD = "the last \\boxed{} of `solution`"
TABLE: dict[str, Benchmark] = {b.name: b for b in (
    # The seven of the paper's table, in its order.
    Benchmark("gsm8k", "gsm8k", True, "question", "`answer` after ####", ("answer",),
              hub=("openai/gsm8k", "main", "test")),
    Benchmark("math", "math", True, "problem", _MATH_GOLD, ("solution",), hub=("zwhe99/MATH", None, "test")),
    Benchmark("svamp", "svamp", True, "Body (ending in '.') + ' ' + Question", "Answer",
              ("Body", "Question", "Answer")),
    Benchmark("asdiv", "asdiv", True, "body + ' ' + question", "answer without parentheses",
              ("body", "question", "answer")),
    Benchmark("minerva_math", "minerva_math", True, "problem", _MATH_GOLD + " (units kept)", ("solution",)),
    Benchmark("olympiadbench", "olympiadbench", True, "question", "final_answer[0] without $", ("final_answer",)),
    Benchmark("mmlu_stem", "mmlu_stem", True, "question + 'Answer Choices: (A) .. (D) ..'", "the letter of answer",
              ("question", "choices", "answer"), demos=tuple(tuple(d) for d in MMLU_STEM_DEMOS)),  # type: ignore
    # Also evaluated: MATH-500 (the math rules; the toolkit has no such data name) and MAWPS.
    Benchmark("math500", "math", False, "problem", _MATH_GOLD, ("solution",),
              hub=("HuggingFaceH4/MATH-500", None, "test")),
    Benchmark("mawps", "mawps", False, "input", "target", ("target",)),
)}
PAPER_BENCHMARKS: tuple[str, ...] = tuple(b.name for b in TABLE.values() if b.in_paper)
ALL_BENCHMARKS: tuple[str, ...] = tuple(TABLE)
RULES: dict[str, str] = {b.name: b.rules for b in TABLE.values()}
FEW_SHOT: dict[str, list[tuple[str, str]]] = {b.name: list(b.demos) for b in TABLE.values() if b.demos}
SHOT_BENCHMARKS: tuple[str, ...] = tuple(FEW_SHOT)  # --shots applies here only (as Qwen's own sh/eval.sh runs it)
HUB_DATASETS: dict[str, tuple[str, str | None, str]] = {b.name: b.hub for b in TABLE.values() if b.hub}


# ---------------------------------------------------------------------------------------------------------------
# Rows


def benchmark_path(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The file ``name`` is read from: ``DATA_DIR/<name>/test.jsonl``, else the shipped copy (``None``: hub)."""
    if data_dir is not None:
        return Path(data_dir).expanduser() / name / "test.jsonl"
    return shipped.benchmark_file(name)


def data_inputs(benchmarks: Sequence[str], data_dir: str | Path | None = None) -> dict[str, str]:
    """Each benchmark's data fingerprint: the content hash of the file it is read from (or the hub id)."""
    out = {}
    for b in benchmarks:
        path = benchmark_path(b, data_dir)
        out[b] = layout.file_hash(path) if path is not None and path.is_file() else f"hub:{HUB_DATASETS.get(b)}"
    return out


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None, *,
                   skip_bad_rows: bool = False, stats: dict | None = None) -> list[dict]:
    """Rows of ``DIR/<name>/test.jsonl`` (without ``data_dir``: the shipped copy, see :mod:`lightreasoner.data`)
    as the toolkit loads them, checked up front.

    Each row gets ``idx`` = its position when the file has none; rows are sorted by ``idx`` and cut to the first
    ``limit``. Every row is checked before any model loads (see :func:`_check_rows`): a bad one is an
    :class:`InputError` naming the file and line, or with ``skip_bad_rows`` is skipped and counted in
    ``stats['bad_rows']``. Returns the raw row dicts (not copied further; grading gets copies).
    """
    if name not in TABLE:
        raise InputError(f"--benchmarks: unknown benchmark {name!r}; choose from {', '.join(ALL_BENCHMARKS)}")
    stats = {} if stats is None else stats
    path = benchmark_path(name, data_dir)
    if data_dir is not None and not path.is_file():  # type: ignore[union-attr]
        raise InputError(f"--data-dir {data_dir}: no {name}/test.jsonl there; the folder must have the "
                         f"Qwen2.5-Math toolkit's layout DIR/<name>/test.jsonl (its evaluation/data)")
    if path is not None:
        where, numbered = str(path), list(iter_jsonl(path, skip_bad=skip_bad_rows, stats=stats))
    else:
        where, numbered = f"{name} (hub)", list(enumerate(_load_hub(name), 1))
    rows = _check_rows(name, where, numbered, skip_bad_rows, stats)
    if rows and "idx" not in rows[0]:
        rows = [{"idx": i, **r} for i, r in enumerate(rows)]
    rows.sort(key=lambda r: r["idx"])
    return rows[:limit] if limit is not None else rows


def row_problem(name: str, row: Any) -> str | None:
    """Why one benchmark row cannot be evaluated (no object, no question or gold the rules can read), or None."""
    from .grading import parse_gold, parse_question

    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "idx" in row and (not isinstance(row["idx"], int) or isinstance(row["idx"], bool)):
        return f"idx must be an integer, got {row['idx']!r}"
    missing = [f for f in TABLE[name].fields if f not in row]
    if missing:
        return f"no usable question or gold for {name} (no field {', '.join(map(repr, missing))})"
    try:
        parse_gold(name, row)
        parse_question(name, row)
    except Exception as e:  # noqa: BLE001 - any failure of the toolkit's readers on this row
        return f"no usable question or gold for {name} ({type(e).__name__}: {e})"
    return None


def _check_rows(name: str, where: str, numbered: Sequence[tuple[int, Any]], skip_bad_rows: bool,
                stats: dict) -> list[dict]:
    """The rows that can be evaluated; ``idx`` present in every row or in none, and never twice."""
    rows, lines, bad = [], [], []
    for n, row in numbered:
        problem = row_problem(name, row)
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
    return [dict(r) for r in hub.load_dataset(f"--benchmarks {name}:", repo, config, split, hint)]


def example_id(example: Mapping[str, Any], position: int) -> str:
    return str(example.get("idx", position))


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def benchmark_shots(benchmark: str, shots: int) -> list[tuple[str, str]]:
    """The first ``shots`` demos for ``benchmark`` (only the ones in :data:`SHOT_BENCHMARKS` take demos)."""
    if shots <= 0 or benchmark not in SHOT_BENCHMARKS:
        return []
    return list(FEW_SHOT.get(benchmark, ()))[:shots]


def build_prompt(benchmark: str, example: Mapping[str, Any], tokenizer: Any = None, prompt_type: str = "qwen25-math",
                 shots: int = 0) -> str:
    """The prompt text for one example; ``""`` when its question is empty (the toolkit skips those).

    ``qwen25-math``: the toolkit's raw ChatML string (no tokenizer needed). ``chat``: the tokenizer's chat template
    over a system turn (the same system message) and one user turn, with the generation prompt.
    """
    from .grading import parse_question

    question = parse_question(benchmark, copy.deepcopy(dict(example)))
    if not question:
        return ""
    demos = benchmark_shots(benchmark, shots)
    if prompt_type == "qwen25-math":
        return build_qwen25_math_prompt(question, demos)
    if prompt_type == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError(["--prompt chat: the tokenizer has no chat template; use --prompt qwen25-math"])
        return chat_text(tokenizer, BOXED_SYSTEM_PROMPT, few_shot_input(question, demos))
    raise ConfigError([f"--prompt: {prompt_type!r} is not one of {', '.join(PROMPT_TYPES)}"])
