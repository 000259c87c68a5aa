"""Training problems: files, toolkit folders, hub datasets, or a built-in generator.

A :class:`Problem` has a stable ``id`` (the row's ``id``/``idx`` field, else a hash of the question), the
question text, and, when the source has one, the reference answer (GSM8K: the text after ``####``). The method
itself never reads answers; they serve the SFT baseline and the analyses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import data as shipped
from . import hub
from .config import flag
from .utils import InputError, iter_jsonl, looks_like_hub_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str | None = None
    solution: str | None = None


def question_id(question: str) -> str:
    return "q" + hashlib.sha256(question.strip().encode()).hexdigest()[:12]


def gsm8k_final_answer(answer: str) -> str:
    """GSM8K's reference: the text after ``####``, commas removed."""
    return answer.split("####")[-1].strip().replace(",", "")


def row_to_problem(row: Any, where: str, question_field: str, answer_field: str | None) -> Problem:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object with a {question_field!r} field, got "
                         f"{type(row).__name__}")
    q = row.get(question_field)
    if not isinstance(q, str) or not q.strip():
        raise InputError(f"{where}: no non-empty {question_field!r} field (fields: {', '.join(map(str, row))}); "
                         f"pass {flag('question_field')} NAME")
    ans_raw = row.get(answer_field) if answer_field else None
    answer = solution = None
    if ans_raw is not None:
        solution = str(ans_raw)
        answer = gsm8k_final_answer(solution) if "####" in solution else solution.strip()
    pid = row.get("id", row.get("idx"))
    return Problem(str(pid) if pid is not None else question_id(q), q.strip(), answer, solution)


def _rows_from_file(path: Path, skip_bad_rows: bool, stats: dict) -> Iterable[tuple[str, Any]]:
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        for n, row in iter_jsonl(path, skip_bad=skip_bad_rows, stats=stats):
            yield f"{path}:{n}", row
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of problems")
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[row {i}]", row
    else:
        raise InputError(f"--data {path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")


def _resolve_folder(folder: Path, split: str) -> Path:
    for name in (f"{split}.jsonl", f"{split}.json", f"{split}.parquet"):
        if (folder / name).exists():
            return folder / name
    raise InputError(f"--data {folder}: no {split}.jsonl/.json/.parquet in this folder (the Qwen2.5-Math "
                     f"toolkit's layout is DIR/{split}.jsonl); pass {flag('split')} or a file")


def load_problems(data: str | None, *, split: str = "train", question_field: str = "question",
                  answer_field: str | None = "answer", max_problems: int | None = None,
                  shuffle_seed: int | None = None, skip_bad_rows: bool = False,
                  generator_seed: int = 0, stats: dict | None = None) -> list[Problem]:
    """Load problems from a file, a toolkit folder, a hub dataset id, a shipped set by name (``gsm8k``: GSM8K
    train, see :mod:`lightreasoner.data`), or the built-in generator (``generated``).

    ``max_problems`` takes the first N (as the authors do); with ``shuffle_seed`` a seeded random subset.
    Bad rows raise :class:`InputError` naming file and line, or are skipped and counted in ``stats``
    (``stats['source']`` says where the problems came from). A path that does not exist, or a hub id that cannot
    be read, is an error naming it: nothing is substituted.
    """
    stats = stats if stats is not None else {}
    if data is None or not str(data).strip():
        raise InputError("--data is required: a file, a toolkit folder, a hub dataset id, `gsm8k` (the shipped "
                         "GSM8K train set) or `generated` (the built-in problem generator)")
    if data == shipped.GENERATED:
        n = max_problems if max_problems is not None else 1000
        problems = generate_problems(n, seed=generator_seed)
        stats["source"] = f"built-in generator (seed {generator_seed})"
        return problems
    path = Path(data).expanduser()
    if not path.exists() and shipped.training_file(data) is not None:
        path = shipped.training_file(data)  # type: ignore[assignment]
    if path.is_dir():
        path = _resolve_folder(path, split)
    if path.exists():
        rows: Iterable[tuple[str, Any]] = _rows_from_file(path, skip_bad_rows, stats)
        stats["source"] = f"shipped:{data}" if not Path(data).expanduser().exists() else str(path)
    elif looks_like_hub_id(data, need_org=True):
        rows = _rows_from_hub(data, split)
        stats["source"] = f"hub:{data}:{split}"
    else:
        raise InputError(f"--data {data!r}: no such file or folder (shipped sets: "
                         f"{', '.join(shipped.TRAINING_SETS)}; or `generated`)")
    problems: list[Problem] = []
    seen: set[str] = set()
    for where, row in rows:
        try:
            p = row_to_problem(row, where, question_field, answer_field)
        except InputError as e:
            if not skip_bad_rows:
                raise InputError(f"{e} (or pass {flag('skip_bad_rows')})") from None
            stats["bad_rows"] = stats.get("bad_rows", 0) + 1
            logger.warning("skipped: %s", e)
            continue
        if p.id in seen:  # identical question twice: keep ids unique and stable
            p = Problem(f"{p.id}-{len(problems)}", p.question, p.answer, p.solution)
        seen.add(p.id)
        problems.append(p)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(problems)
    if max_problems is not None:
        problems = problems[:max_problems]
    return problems


def _rows_from_hub(dataset_id: str, split: str) -> Iterable[tuple[str, Any]]:
    config = "main" if dataset_id.endswith("gsm8k") else None
    ds = hub.load_dataset("--data", dataset_id, config, split, "pass a local file, or gsm8k for the shipped set")
    for i, row in enumerate(ds):
        yield f"{dataset_id}[{split}][{i}]", row


# ---------------------------------------------------------------------------------------------------------------
# Built-in generator: multi-step arithmetic word problems with exact integer answers.

_NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kofi", "Lena"]
_ITEMS = ["apples", "marbles", "stickers", "books", "cookies", "pencils", "stamps", "shells", "cards", "beads"]


def _step(rng: random.Random, total: int, item: str) -> tuple[str, int, str]:
    """One operation on the running total: (sentence, new total, worked line)."""
    kind = rng.choice(["add", "sub", "mul", "div", "give_each"])
    if kind == "sub" and total > 1:
        k = rng.randint(1, total - 1)
        return f"Then {k} of the {item} are given away.", total - k, f"{total} - {k} = {total - k}"
    if kind == "mul" and total <= 60:
        k = rng.randint(2, 4)
        return f"Then the number of {item} is multiplied by {k}.", total * k, f"{total} * {k} = {total * k}"
    if kind == "div":
        divisors = [d for d in (2, 3, 4, 5) if total % d == 0]
        if divisors:
            d = rng.choice(divisors)
            return (f"Then the {item} are split evenly into {d} groups and one group is kept.", total // d,
                    f"{total} / {d} = {total // d}")
    if kind == "give_each":
        people, each = rng.randint(2, 5), rng.randint(2, 6)
        return (f"Then {people} friends each give {each} more {item}.", total + people * each,
                f"{total} + {people} * {each} = {total + people * each}")
    k = rng.randint(2, 30)
    return f"Then {k} more {item} are bought.", total + k, f"{total} + {k} = {total + k}"


def generate_problems(n: int, seed: int = 0) -> list[Problem]:
    """``n`` GSM8K-style problems with 2 to 5 steps, deterministic by ``seed``; answers in GSM8K form."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        total = rng.randint(5, 40)
        sentences, lines = [f"{name} has {total} {item}."], []
        for _ in range(rng.randint(2, 5)):
            s, total, line = _step(rng, total, item)
            sentences.append(s)
            lines.append(line)
        question = " ".join(sentences) + f" How many {item} does {name} have now?"
        solution = "\n".join(lines) + f"\n#### {total}"
        out.append(Problem(f"gen-{seed}-{i}", question, str(total), solution))
    return out
