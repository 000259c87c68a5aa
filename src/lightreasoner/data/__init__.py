"""The data sets shipped with the package (gzip-compressed JSONL; sources and licences in ``PROVENANCE.md``).

- Training problems by name: ``gsm8k`` (GSM8K train, 7,473 problems). ``generated`` names the built-in problem
  generator instead (see :mod:`lightreasoner.problems`).
- Benchmarks by name, in the Qwen2.5-Math toolkit's row format: the paper's seven (gsm8k, math, svamp, asdiv,
  minerva_math, olympiadbench, mmlu_stem), math500 and mawps.

A name is looked up here only when no file or folder of that name exists, so a local path always wins.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAINING_SETS = {"gsm8k": HERE / "gsm8k_train.jsonl.gz"}
GENERATED = "generated"


def training_file(name: str) -> Path | None:
    """The shipped training set called ``name``, or ``None``."""
    return TRAINING_SETS.get(name)


def benchmark_file(name: str) -> Path | None:
    """The shipped test set of benchmark ``name`` (toolkit rows), or ``None``."""
    path = HERE / "bench" / f"{name}.jsonl.gz"
    return path if path.is_file() else None


def benchmark_names() -> list[str]:
    return sorted(p.name.split(".")[0] for p in (HERE / "bench").glob("*.jsonl.gz"))
