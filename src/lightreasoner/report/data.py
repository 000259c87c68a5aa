"""What the report reads from a run folder (:class:`layout.RunLayout`), each part ``None``/empty when absent.

A run folder holds one folder per stage, each with its ``meta.json`` written last (``seconds``: the stage's time
summed over resumed runs); the report reads those and the stages' own files: ``sample/samples.jsonl``,
``train/summary.json`` and ``train/metrics.jsonl``, ``eval/<model>/<benchmark>.jsonl``, ``sft/summary.json``,
``perplexity/perplexity.json``, and the resolved run config ``config.yaml``. Nothing here requires a stage to be
finished: a partial run still gets a report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_yaml
from ..layout import META, RunLayout
from ..stats import compare_runs, load_run
from ..utils import InputError, read_complete_jsonl, read_json

logger = logging.getLogger(__name__)

RUN_NAMES = {"base": "base expert", "tuned": "LightReasoner", "sft": "SFT"}  # eval/<name> -> shown name
CORE_STAGES = ("sample", "train", "merge", "eval_base", "eval_tuned")  # stages of every run


def stage_folders(L: RunLayout) -> dict[str, Path]:
    """The folders of the stages the report times (every stage but the report itself)."""
    return {k: v for k, v in L.stage_folders().items() if k != "report"}


def run_files(L: RunLayout) -> dict[str, Path]:
    """The files the report reads besides each stage's meta.json and the eval records."""
    return {"config": L.config, "samples": L.samples, "sample_meta": L.sample / META,
            "train_summary": L.train / "summary.json", "metrics": L.train / "metrics.jsonl",
            "sft_summary": L.sft / "summary.json", "perplexity": L.perplexity / "perplexity.json"}


def _read_json_or_none(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        logger.warning("%s: not readable JSON (%s); ignored", path, e)
        return None


def _read_samples(path: Path) -> list[dict] | None:
    """``lightreasoner sample`` records, or ``None`` when absent or not sample records (no per-step kl)."""
    if not path.is_file():
        return None
    records = read_complete_jsonl(path)
    if records and not isinstance(records[0].get("kl"), list):
        logger.warning("%s does not hold `lightreasoner sample` records (no per-step kl); ignored", path)
        return None
    return records


def _has_jsonl(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.jsonl"))


@dataclass
class RunData:
    """Everything the report reads, each ``None``/empty when absent."""

    layout: RunLayout
    run_config: dict | None  # config.yaml: the run's options, one mapping per stage section (sample, train, ...)
    timings: dict[str, Any]  # stage -> its meta.json "seconds", for the stages that have a meta.json
    records: list[dict] | None  # sample/samples.jsonl
    sample_meta: dict | None  # sample/meta.json: config, counts, expert, amateur, timings, versions, seconds
    train_summary: dict | None
    metrics: list[dict]
    evals: dict[str, Path]  # name -> eval folder holding <benchmark>.jsonl files
    sft_summary: dict | None
    perplexity: dict | None

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunData":
        """What the run folder holds, less the optional stages its saved config leaves out (an SFT baseline or
        perplexity left by an earlier run of other settings is not this run's)."""
        L = RunLayout(run_dir)
        f = run_files(L)
        run_config = load_yaml(f["config"]) if f["config"].is_file() else None
        sft = bool((run_config or {}).get("with_sft", True))  # only a config that turns one off leaves it out
        perplexity = bool((run_config or {}).get("perplexity_problems", True))
        left_out = ({"sft", "eval_sft"} if not sft else set()) | ({"perplexity"} if not perplexity else set())
        timings = {}
        for name, folder in stage_folders(L).items():
            meta = None if name in left_out else _read_json_or_none(folder / META)
            if meta is not None:
                timings[name] = meta.get("seconds")
        return cls(layout=L, run_config=run_config, timings=timings, records=_read_samples(f["samples"]),
                   sample_meta=_read_json_or_none(f["sample_meta"]),
                   train_summary=_read_json_or_none(f["train_summary"]),
                   metrics=read_complete_jsonl(f["metrics"]) if f["metrics"].is_file() else [],
                   evals={n: L.eval(n) for n in RUN_NAMES if _has_jsonl(L.eval(n)) and (sft or n != "sft")},
                   sft_summary=_read_json_or_none(f["sft_summary"]) if sft else None,
                   perplexity=_read_json_or_none(f["perplexity"]) if perplexity else None)

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    def name(self, what: str) -> str:
        """A file the report reads (:func:`run_files` key), as a path relative to the run folder."""
        return run_files(self.layout)[what].relative_to(self.run_dir).as_posix()

    def config_value(self, name: str, default: Any = None) -> Any:
        """A top-level option of the saved run config (expert, amateur, with_sft, ...)."""
        value = (self.run_config or {}).get(name)
        return default if value is None else value

    def sample_setting(self, name: str, default: Any = None) -> Any:
        """A sampling setting (alpha, beta, ...) from sample/meta.json, else the run config's sample section."""
        for src in ((self.sample_meta or {}).get("config"), (self.run_config or {}).get("sample")):
            value = (src or {}).get(name) if isinstance(src, dict) else None
            if value is not None:
                return value
        return default

    def expected_stages(self) -> list[str]:
        """The stages this run has: the core ones, SFT with ``with_sft``, perplexity when the config asks for it."""
        names = list(CORE_STAGES)
        if self.config_value("with_sft"):
            names += ["sft", "eval_sft"]
        if (self.config_value("perplexity_problems") or 0) > 0:
            names.append("perplexity")
        return names

    def unfinished_stages(self) -> list[str]:
        """Expected stages without a meta.json (not run, or not finished), as ``<folder>/meta.json``."""
        folders = stage_folders(self.layout)
        return [(folders[s] / META).relative_to(self.run_dir).as_posix() for s in self.expected_stages()
                if s not in self.timings]

    def comparison(self, other: str, against: str = "base") -> dict | None:
        """:func:`stats.compare_runs` of ``against`` (A) vs ``other`` (B), or ``None`` when either is absent."""
        if against not in self.evals or other not in self.evals:
            return None
        try:
            return compare_runs(self.evals[against], self.evals[other])
        except InputError as e:
            logger.warning("cannot pair eval/%s with eval/%s: %s", against, other, e)
            return None


def eval_accuracies(folder: Path) -> dict[str, tuple[int, int]]:
    """``{benchmark: (correct, n)}`` of an eval folder's JSONL files."""
    return {b: (sum(v.values()), len(v)) for b, v in load_run(folder).items()}


def lightreasoner_costs(data: RunData) -> dict[str, Any]:
    """Sampling and training seconds (the stages' meta.json ``seconds``), sampled problems and tuned tokens of the
    LightReasoner run; training falls back to train/summary.json's time when train/meta.json is not written yet."""
    summary = data.train_summary or {}
    sampling = data.timings.get("sample")
    training = data.timings.get("train")
    if training is None:
        training = summary.get("wall_time_s", summary.get("train_time_s"))
    problems = ((data.sample_meta or {}).get("counts") or {}).get("problems")
    if problems is None and data.records is not None:
        problems = len(data.records)
    tokens = summary.get("tuned_tokens", summary.get("kept_steps_seen"))
    if tokens is None and data.metrics:
        tokens = data.metrics[-1].get("kept_steps_seen")
    total = None if sampling is None or training is None else float(sampling) + float(training)
    return {"sampling_s": sampling, "training_s": training, "total_s": total, "problems": problems,
            "tuned_tokens": tokens}


def sft_costs(data: RunData) -> dict[str, Any] | None:
    """The SFT baseline's sampling and training seconds, sampled and used problems, tuned tokens (sft/summary.json)."""
    s = data.sft_summary
    if s is None:
        return None
    times = s.get("time_s") or {}
    sampling, training = times.get("sampling"), times.get("training")
    total = None if sampling is None or training is None else float(sampling) + float(training)
    return {"sampling_s": sampling, "training_s": training, "total_s": total, "problems": s.get("problems_sampled"),
            "problems_used": s.get("problems_used"), "tuned_tokens": s.get("tuned_tokens")}
