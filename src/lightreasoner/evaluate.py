"""``lightreasoner eval``: zero-shot greedy pass@1 on the paper's math benchmarks, graded like Qwen2.5-Math.

The run follows ``/work/shared/EVAL_SPEC.md`` (the Qwen2.5-Math toolkit, prompt type ``qwen25-math-cot``): rows as
the toolkit loads them (:mod:`.benchmarks`), its raw prompt or the model's chat template with the same system
message (``--prompt``, :mod:`.prompts`), greedy decoding up to ``--max-new-tokens`` stopping at the stop strings
and EOS ids, the text cut at the first stop string (:mod:`.generation`), the toolkit's grading (:mod:`.grading`);
accuracy = mean verdict x 100 (one decimal, with its 95% interval); the average is the plain mean over benchmarks.

Decoding is continuously batched (up to ``--batch-size`` rows, at most ``--max-batch-tokens`` KV-cache tokens).
Finished completions are graded and appended to ``<output>/<benchmark>.jsonl`` (fsynced) as they come, so a
killed run continues where it stopped; at the end each file is rewritten in the benchmark's order.

Under ``accelerate launch``/``torchrun`` rank 0 claims the folder and checks the records there; every rank
evaluates every ``world_size``-th problem of each benchmark into its own shard (resumable on its own), and rank 0
merges the shards in the benchmark's order and writes the summary (:mod:`.shards`): the files of a one-process run.

``--grader`` picks the verdicts: ``qwen`` (the toolkit's, default) or ``math-verify`` (Hugging Face Math-Verify's,
as lighteval and open-r1 report them); the summary, config.json and meta.json name it, and meta.json's
``versions`` add the grading libraries' (:func:`.grading.grading_versions`). The grader is a setting of the
stage: another one is a changed setting (``--rerun`` grades the kept completions again, generating nothing).

Beside our files, ``<output>/toolkit/<benchmark>/`` holds each benchmark in the toolkit's own per-sample JSONL and
metrics JSON (:mod:`.toolkit_format`), written by rank 0 after merging, so a run can be diffed against the
toolkit's.

Deviation from the toolkit: its tool-call continuation (running python code that the model wrote) is not done
here; model text never reaches ``eval``/``exec``. Completions that would have triggered it (no ``boxed`` and ending
with three backticks) are counted in the summary (``tool_call_skipped``).

``lightreasoner eval --compare RUN_A RUN_B`` pairs two output folders problem by problem (:mod:`.stats`): per
benchmark the exact McNemar test, the 95% interval of the change and the smallest change detectable at 80% power.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from . import layout, shards
from .benchmarks import ALL_BENCHMARKS, FEW_SHOT, PAPER_BENCHMARKS, SHOT_BENCHMARKS, data_inputs, load_benchmark
from .config import Checked, ConfigError, flag, option, save_config, to_dict
from .evaluation import EvalParams, collect, evaluate_model, extra_path, overall_summary, plan, summary_markdown
from .grading import DEFAULT_TIMEOUT, GRADERS, grading_versions
from .models import DTYPES, dtype_name
from .prompts import PROMPT_TYPES, STOP_STRINGS, eos_ids
from .stats import compare_runs
from .toolkit_format import TOOLKIT_FOLDER, write_toolkit_files
from .utils import (DistInfo, InputError, atomic_write, dist_info, environment_info, read_json, write_json,
                    writes_output)

logger = logging.getLogger(__name__)

# Fields whose change makes earlier completions in an output folder incomparable (checked on resume).
_IDENTITY_KEYS = ("model", "model_fingerprint", "adapter_fingerprint", "prompt", "shots", "max_new_tokens", "dtype")


@dataclass(frozen=True)
class EvalConfig(Checked):
    """Zero-shot greedy pass@1 on the paper's benchmarks, graded as the Qwen2.5-Math toolkit does (or as
    Math-Verify does, --grader math-verify).

    Writes one JSONL per benchmark, summary.json/.md, config.json and the toolkit's own files (toolkit/) into
    --output, and resumes there after a kill. --compare RUN_A,RUN_B instead compares two finished output folders
    with an exact McNemar test.
    """

    model: str | None = option(None, run_sets=True, help="model spec: an embedded name, a .gguf file, a "
                               "save_pretrained folder or a hub id (required unless --compare)")
    adapter: str | None = option(None, "a LoRA adapter folder folded into --model's weights for the evaluation",
                                 run_sets=True)
    revision: str | None = option(None, "model revision (branch, tag or commit) on the hub", run_sets=True,
                                  result=False)  # part of the model's input fingerprint
    trust_remote_code: bool = option(False, "allow model repositories to run their own code")
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
    grade_timeout: float = option(DEFAULT_TIMEOUT, "seconds per equality check before it counts as wrong "
                                                   "(toolkit: 3; math-verify: per answer)")
    grader: str = option("qwen", "qwen: the Qwen2.5-Math toolkit's verdicts; math-verify: Hugging Face "
                                 "Math-Verify's, as lighteval and open-r1 report them", choices=GRADERS)
    skip_bad_rows: bool = option(False, "skip benchmark rows without a usable question or gold (counted) instead "
                                        "of stopping")
    overwrite: bool = option(False, "discard results already in --output instead of resuming", result=False)
    rerun: bool = option(False, "evaluate again when --output holds an evaluation of other settings (records of "
                                "the same model, prompt and decoding are reused)", result=False, saved=False,
                         run_sets=True)

    def validate(self) -> list[str]:
        """Every problem, worded as the command line words it. --model and --output (unless --compare) are
        required when the stage runs: built in Python (``EvalConfig()``), a config may lack them until then
        (:func:`config.check` defers a problem of a field still none)."""
        p: list[str] = []
        if self.compare is not None:
            if len(self.compare) != 2:
                p.append(f"{flag('compare')} takes two run folders RUN_A,RUN_B, got {len(self.compare)}")
        else:
            p += [f"{flag(name)} is required (or {flag('compare')} RUN_A,RUN_B)" for name in ("model", "output")
                  if not getattr(self, name)]
        n_demos = min((len(FEW_SHOT.get(b, ())) for b in SHOT_BENCHMARKS), default=0)
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
        if self.model and self.compare is None:
            from .models import revision_problem

            p += [e for e in (revision_problem(self.model, self.revision, flag("revision")),) if e]
        return p


# ---------------------------------------------------------------------------------------------------------------
# The stage


def file_fingerprint(folder: str | Path, patterns: Sequence[str] = ("adapter_config.json", "*.safetensors",
                                                                     "*.bin")) -> str:
    """SHA-256 over the named files of a (small) folder, e.g. a LoRA adapter."""
    h = hashlib.sha256()
    folder = Path(folder).expanduser()
    for pat in patterns:
        for f in sorted(folder.glob(pat)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()


def load_adapter(model: Any, adapter: str | Path) -> Any:
    """``model`` with a LoRA adapter folded into its weights, in eval mode.

    The fold is ``lightreasoner merge``'s (:func:`adapters.merge_adapter`: float32, then each tensor's dtype), so an
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


def identity(cfg: EvalConfig, **inputs: Any) -> dict:
    """The evaluation stage's identity: the model (and adapter) fingerprints, each benchmark's data, the settings."""
    found = {"model": lambda: layout.model_input(cfg.model, cfg.revision),  # type: ignore[arg-type]
             "adapter": lambda: (layout.output_fingerprint(cfg.adapter) or file_fingerprint(cfg.adapter))
             if cfg.adapter else None,
             "data_dir": lambda: data_inputs(cfg.benchmarks, cfg.data_dir)}
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
    adapter, prompt, decoding, each benchmark's data): they are then reused, not generated again (and graded
    again when the grader or its timeout changed, :func:`evaluation.evaluate_model`). Otherwise they are
    discarded when ``overwrite`` or ``rerun`` says so, else refused."""
    cfg_file = out / "config.json"
    old = read_json(cfg_file).get("identity", {}) if cfg_file.exists() else None
    diffs = [f"{k}: {old.get(k)!r} there, {identity.get(k)!r} now" for k in _IDENTITY_KEYS
             if old is not None and old.get(k) != identity.get(k)]
    if old is not None:  # a benchmark's data, for those evaluated then and now (records older than this: unknown)
        was, now = old.get("data") or {}, identity.get("data") or {}
        diffs += [f"{b} data: {was[b]} there, {now[b]} now" for b in sorted(set(was) & set(now)) if was[b] != now[b]]
    if old is None and any(out.glob("*.jsonl")):
        diffs = ["JSONL files without the config.json that says how they were made"]
    if overwrite or (rerun and diffs):
        for f in [cfg_file] + [f for b in ALL_BENCHMARKS
                               for f in (out / f"{b}.jsonl", extra_path(out / f"{b}.jsonl"))]:
            f.unlink(missing_ok=True)
        _remove_summaries(out)
        for b in ALL_BENCHMARKS:
            shards.remove_shards(out / f"{b}.jsonl")
        return
    if diffs:
        raise ConfigError([f"--output {out} holds results of a different evaluation ({'; '.join(diffs)}); "
                           f"pass --rerun to discard them or choose another --output"])


@writes_output("eval", kind="folder")
def main(cfg: EvalConfig) -> int:
    """``lightreasoner eval``: evaluate a model (optionally with a LoRA adapter), or compare two runs. Under a
    launcher rank 0 claims --output and the other ranks follow its claim (see the module doc)."""
    info = dist_info()
    if cfg.compare is not None:
        return compare_main(cfg) if info.is_main else 0
    from .models import resolve_source

    resolve_source(cfg.model, prepare=False)  # type: ignore[arg-type]  # a mistyped path fails here, not later
    ident = identity(cfg)
    if not info.is_main:  # rank 0 claims (and, with --rerun, clears) the folder; the others follow its claim
        done = shards.wait_for_claim(cfg.output, ident) == "done"  # type: ignore[arg-type]
        return 0 if done else _evaluate(cfg, info, None)
    keep = () if cfg.overwrite else ("*.jsonl", "config.json")  # records are checked by _check_output
    with layout.StageRun(cfg.output, ident, rerun=cfg.rerun or cfg.overwrite,  # type: ignore[arg-type]
                         keep=keep) as stage:
        if stage.done:
            logger.info("%s is complete for these settings; nothing to do", cfg.output)
            return 0
        if cfg.overwrite:  # at once: the other ranks go by config.json (_wait_for_records_claim)
            (Path(cfg.output) / "config.json").unlink(missing_ok=True)  # type: ignore[arg-type]
        return _evaluate(cfg, info, stage)


def _wait_for_records_claim(out: Path, record_identity: Mapping[str, Any]) -> None:
    """Ranks > 0: wait until rank 0 has checked the records in ``out`` for this model, prompt and decoding
    (config.json names them; rank 0 writes it after discarding records of another evaluation)."""
    def claimed() -> bool:
        try:
            return read_json(out / "config.json").get("identity") == dict(record_identity)
        except (OSError, InputError):  # not there yet
            return False

    shards.wait_until(claimed, f"rank 0 to check the records in {out}", shards.CLAIM_WAIT_S)


def _evaluate(cfg: EvalConfig, info: DistInfo, stage: layout.StageRun | None) -> int:
    """Evaluate into a claimed stage folder (records of the same model, prompt and decoding resume); ``stage``
    is None on ranks > 0, which evaluate their shares only."""
    from .models import load_model

    t0 = time.perf_counter()
    out = Path(cfg.output)  # type: ignore[arg-type]
    bad_rows: dict[str, dict] = {}
    data = {b: load_benchmark(b, cfg.data_dir, cfg.limit, skip_bad_rows=cfg.skip_bad_rows,
                              stats=bad_rows.setdefault(b, {})) for b in cfg.benchmarks}  # before the model
    adapter_fp = _check_adapter(cfg)
    shards.share_cores(info)
    torch.manual_seed(cfg.seed)
    device = shards.rank_device(cfg.device, info)
    loaded = load_model(cfg.model, dtype=cfg.dtype, device=device,  # type: ignore[arg-type]
                        trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
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
                "dtype": dtype_name(model),
                "data": data_inputs(cfg.benchmarks, cfg.data_dir)}
    if stage is None:
        _wait_for_records_claim(out, record_identity)
        for b, examples in data.items():
            evaluate_model(model, tokenizer, b, examples, EvalParams.of(cfg), out / f"{b}.jsonl", rank=info.rank,
                           world_size=info.world_size)
        return 0
    stage.start()
    _check_output(out, record_identity, cfg.overwrite, cfg.rerun)
    # A summary describes a finished evaluation. Until this one finishes there is none: an old summary (say of a
    # smaller --limit) must not make an interrupted run look complete. The records it was built from are kept.
    _remove_summaries(out)
    eos = eos_ids(tokenizer, model, STOP_STRINGS)
    versions = {**environment_info(), **grading_versions()}  # the grading libraries decide verdicts
    save_config(cfg, out / "config.json", extra={
        "identity": record_identity, "model": loaded.describe(), "adapter": cfg.adapter, "stop_strings": list(STOP_STRINGS),
        "eos_ids": eos, "examples": {b: len(v) for b, v in data.items()}, "environment": versions})

    results, per_rank = _evaluate_all(model, tokenizer, data, cfg, out, info)
    summary = overall_summary(results)
    summary.update({"model": cfg.model, "model_fingerprint": loaded.fingerprint, "adapter": cfg.adapter,
                    "prompt": cfg.prompt, "shots": cfg.shots, "max_new_tokens": cfg.max_new_tokens,
                    "dtype": record_identity["dtype"], "limit": cfg.limit, "grader": cfg.grader,
                    "bad_rows_skipped": {b: st.get("bad_rows", 0) for b, st in bad_rows.items()},
                    "wall_seconds": round(time.perf_counter() - t0, 3)})
    write_json(out / "summary.json", summary)
    md = summary_markdown(summary, title=f"Evaluation of {cfg.model}" + (f" + {cfg.adapter}" if cfg.adapter else ""))
    atomic_write(out / "summary.md", md)
    _write_toolkit(out, data, results, tokenizer, cfg)
    stage.finish(config=to_dict(cfg), counts={b: {k: r[k] for k in ("n", "correct", "accuracy")}
                                              for b, r in results.items()},
                 extra={"model": loaded.describe(), "adapter": cfg.adapter, "grader": cfg.grader,
                        "versions": versions,
                        **({"per_rank": per_rank} if per_rank else {})})
    print(md)
    return 0


def _evaluate_all(model: Any, tokenizer: Any, data: Mapping[str, Sequence[Mapping[str, Any]]], cfg: EvalConfig,
                  out: Path, info: DistInfo) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Rank 0 (or the one process): every benchmark's summary with its records, after rank 0's own shares and,
    under a launcher, the merge of every rank's shards; and the ranks' marks (counts, timings) per benchmark."""
    results, per_rank = {}, {}
    for b, examples in data.items():
        results[b] = evaluate_model(model, tokenizer, b, examples, EvalParams.of(cfg), out / f"{b}.jsonl",
                                    rank=info.rank, world_size=info.world_size)
    for b, examples in data.items():
        if info.world_size > 1:
            results[b], marks = collect(b, examples, tokenizer, EvalParams.of(cfg), out / f"{b}.jsonl",
                                        info.world_size)
            per_rank[b] = list(marks.values())
        logger.info("%s: %s%% of %d (%d truncated)", b, results[b]["accuracy"], results[b]["n"],
                    results[b]["truncated"])
    return results, per_rank


def _remove_summaries(out: Path) -> None:
    """Remove the files that describe a finished evaluation: the summary and the toolkit-format files."""
    for f in (out / "summary.json", out / "summary.md"):
        f.unlink(missing_ok=True)
    shutil.rmtree(out / TOOLKIT_FOLDER, ignore_errors=True)


def _write_toolkit(out: Path, data: Mapping[str, Sequence[Mapping[str, Any]]], results: Mapping[str, dict],
                   tokenizer: Any, cfg: EvalConfig) -> None:
    """Rank 0, after merging: each benchmark's records in the Qwen2.5-Math toolkit's files, under
    ``out/toolkit/<benchmark>/`` (:mod:`.toolkit_format`)."""
    for b, examples in data.items():
        rows = {eid: ex for eid, ex, _ in plan(b, examples, tokenizer, EvalParams.of(cfg))[0]}
        pairs = [(rows[r["id"]], r) for r in results[b]["records"]]
        write_toolkit_files(out / TOOLKIT_FOLDER, b, pairs, prompt=cfg.prompt, limit=cfg.limit, seed=cfg.seed,
                            seconds=results[b]["generation_seconds"])


# ---------------------------------------------------------------------------------------------------------------
# Comparing two runs (the statistics are lightreasoner.stats')


def compare_markdown(cmp: Mapping[str, Any]) -> str:
    def mdd(row: Mapping[str, Any]) -> str:
        v = row.get("min_detectable_80")
        return "-" if v is None else f"{v:.1f}"

    lines = [f"# {cmp['run_a']} (A) vs {cmp['run_b']} (B)", "",
             "| benchmark | n | A | B | B - A | 95% CI | detectable | A right only | B right only | McNemar p |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in cmp["benchmarks"].items():
        lo, hi = r["delta_ci95"]
        lines.append(f"| {name} | {r['n']} | {r['acc_a']:.1f} | {r['acc_b']:.1f} | {r['delta']:+.1f} | "
                     f"{lo:+.1f} .. {hi:+.1f} | {mdd(r)} | {r['a_only']} | {r['b_only']} | {r['p_value']:.3g} |")
    av, al = cmp["average"], cmp["all"]
    if len(cmp["benchmarks"]) > 1:
        lo, hi = al["delta_ci95"]
        lines.append(f"| **average** | | {av['acc_a']:.1f} | {av['acc_b']:.1f} | {av['delta']:+.1f} | | | | | |")
        lines.append(f"| **pooled** | {al['n']} | {al['acc_a']:.1f} | {al['acc_b']:.1f} | {al['delta']:+.1f} | "
                     f"{lo:+.1f} .. {hi:+.1f} | {mdd(al)} | {al['a_only']} | {al['b_only']} | {al['p_value']:.3g} |")
    lines += ["", "p: exact two-sided McNemar test on the problems one run got right and the other wrong; 95% CI: "
                  "paired Wald interval of B - A in points; detectable: the smallest change (points) this many "
                  "problems, disagreeing this often, detect with about 80% power at the 5% level (- : none). "
                  "average: the mean over benchmarks (no test of its own); pooled: every paired problem as one set."]
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


__all__ = ["EvalConfig", "main", "identity", "compare_main", "compare_markdown"]
