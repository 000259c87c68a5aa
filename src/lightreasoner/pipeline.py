"""``lightreasoner run``: the method end to end, with the SFT baseline optional, and a report.

Stages, each writing into the run folder and each skipped when its output is complete (and resumed when not),
so the same command run again after a crash or a kill continues where it stopped:

    sample -> train -> merge -> eval base -> eval tuned [-> sft -> eval sft] [-> perplexity] -> report

Layout: ``samples.jsonl`` (+ manifest), ``adapter/``, ``merged/``, ``eval/{base,tuned,sft}/``, ``sft/``,
``perplexity.json``, ``run_config.json``, ``timings.json`` (seconds per stage, summed over resumed runs),
``report.md``/``report.html`` and ``figures/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, option, resolve, to_dict
from .embedded import DEFAULT_AMATEUR, DEFAULT_EXPERT
from .utils import InputError, environment_info, read_json, write_json, writes_output

logger = logging.getLogger(__name__)

EVAL_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class RunConfig:
    """Run LightReasoner end to end: sample, train, merge, evaluate base and tuned expert, report.

    example: lightreasoner run --config configs/embedded.yaml --output runs/embedded
    """

    output: str = option("runs/embedded", "run folder (everything goes here; rerun the command to resume)")
    expert: str = option(DEFAULT_EXPERT, "expert model: embedded name, .gguf file, checkpoint folder or hub id")
    amateur: str = option(DEFAULT_AMATEUR, "amateur model (same forms)")
    data: str | None = option("openai/gsm8k", "training problems: file, toolkit folder or hub id; if it cannot be "
                                              "read, the built-in generator is used (none: always the generator)")
    max_problems: int | None = option(128, "training problems sampled (the first N)")
    shuffle_seed: int | None = option(None, "take a seeded random subset of the training problems instead")
    # sampling
    max_new_tokens: int = option(128, "reasoning prefix length")
    sample_batch_size: int = option(32, "problems per sampling batch")
    alpha: float = option(0.2, "plausible set threshold")
    beta: float = option(0.4, "KL selection threshold")
    selection: bool = option(True, "select steps by beta (ablation: --no-selection)")
    contrast: bool = option(True, "contrastive labels (ablation: --no-contrast)")
    allow_vocab_mismatch: bool = option(False, "compare only the common id range of differing vocabularies")
    # training
    steps_per_update: int = option(16, "kept steps per optimizer update")
    max_steps: int = option(100, "optimizer updates")
    epochs: float | None = option(None, "passes over the kept steps instead of --max-steps")
    lr: float = option(1e-4, "peak learning rate")
    lr_scheduler: str = option("constant", "learning-rate schedule", choices=("linear", "constant"))
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: float = option(16, "LoRA alpha")
    lora_targets: tuple[str, ...] = option(("q_proj", "v_proj"), "LoRA target modules")
    save_every: int | None = option(50, "training checkpoint interval (also used for the perplexity analysis)")
    # evaluation
    eval_benchmarks: tuple[str, ...] = option(("gsm8k",), "benchmarks evaluated before and after")
    eval_data_dir: str | None = option(None, "benchmark folder in the toolkit's layout (none: the hub, or held-out "
                                             "generated problems when training used the generator)")
    eval_limit: int | None = option(150, "first N problems of each benchmark (none: all)")
    eval_prompt: str = option("chat", "eval prompt: the model's chat template or the toolkit's raw template",
                              choices=("chat", "qwen25-math"))
    eval_max_new_tokens: int = option(512, "new tokens per evaluation answer")
    eval_batch_size: int = option(64, "prompts decoded together in evaluation and SFT sampling "
                                        "(continuous batching)")
    # baseline and analyses
    with_sft: bool = option(False, "also run the rejection-sampling SFT baseline and evaluate it")
    sft_samples_per_problem: int = option(4, "SFT: solutions sampled per problem")
    sft_temperature: float = option(0.7, "SFT: sampling temperature")
    sft_max_new_tokens: int = option(512, "SFT: longest sampled solution")
    sft_epochs: float = option(2.0, "SFT: passes over the kept solutions")
    perplexity_problems: int = option(32, "held-out problems for the gold-answer perplexity across checkpoints "
                                          "(0: skip)")
    dtype: str = option("auto", "model dtype", choices=("auto", "float32", "bfloat16", "float16"))
    device: str | None = option(None, "device (default: cuda if available, else cpu)")


def generator_fallback(cfg: RunConfig) -> tuple[str | None, str | None]:
    """Resolve the training data and the evaluation folder, falling back to the built-in generator."""
    from .problems import load_problems

    if cfg.data is None:
        return None, cfg.eval_data_dir
    try:
        load_problems(cfg.data, max_problems=1)
        return cfg.data, cfg.eval_data_dir
    except InputError as e:
        logger.warning("training data %r cannot be read (%s); using the built-in problem generator instead, and "
                       "held-out generated problems for evaluation", cfg.data, str(e).split(";")[0])
        return None, None


def write_heldout(run: Path, n: int) -> Path:
    """Held-out generated problems (another seed) in the toolkit's GSM8K layout, for evaluation."""
    from .problems import generate_problems

    folder = run / "heldout"
    (folder / "gsm8k").mkdir(parents=True, exist_ok=True)
    rows = [{"idx": i, "question": p.question, "answer": p.solution} for i, p in
            enumerate(generate_problems(n, seed=10_000))]
    (folder / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# A stage's flags as `run` spells them, so an error raised inside a stage names the flag the user can change.
SAMPLE_FLAGS = {"--batch-size": "--sample-batch-size"}
EVAL_FLAGS = {"--benchmarks": "--eval-benchmarks", "--data-dir": "--eval-data-dir", "--limit": "--eval-limit",
              "--prompt": "--eval-prompt", "--max-new-tokens": "--eval-max-new-tokens",
              "--batch-size": "--eval-batch-size"}
SFT_FLAGS = {"--samples-per-problem": "--sft-samples-per-problem", "--temperature": "--sft-temperature",
             "--max-new-tokens": "--sft-max-new-tokens", "--epochs": "--sft-epochs",
             "--batch-size": "--eval-batch-size"}


def as_run_flags(text: str, flags: dict[str, str]) -> str:
    """``text`` with each of a stage's flags (whole flags only) replaced by ``run``'s name for it."""
    pattern = r"(?<![\w-])(" + "|".join(map(re.escape, flags)) + r")(?![\w-])"
    return re.sub(pattern, lambda m: flags[m.group(1)], text)


@contextlib.contextmanager
def run_flags(flags: dict[str, str]):
    """Re-raise a stage's InputError or ConfigError with ``run``'s flag names (see :func:`as_run_flags`)."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError([as_run_flags(p, flags) for p in e.problems]) from None
    except InputError as e:
        raise InputError(as_run_flags(str(e), flags)) from None


class StageRunner:
    """Runs stages in order, skipping finished ones, and sums each stage's wall time in ``timings.json``."""

    def __init__(self, run: Path):
        self.run = run
        self.path = run / "timings.json"
        self.timings: dict[str, float] = read_json(self.path) if self.path.exists() else {}

    def __call__(self, name: str, done: Callable[[], bool], fn: Callable[[], Any]) -> None:
        if done():
            logger.info("[%s] complete, skipped", name)
            return
        logger.info("[%s] running", name)
        t0 = time.perf_counter()
        try:
            rc = fn()
        finally:  # an interrupted stage's time counts too: the resumed run adds the rest
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 2)
            write_json(self.path, self.timings)
        if rc:
            raise RuntimeError(f"stage {name} failed with exit code {rc}; fix the cause and rerun to resume")


# An evaluation folder is done when it is complete for the asked selection; when the selection changed (say, a
# larger --eval-limit), the stage runs again and ``eval`` reuses the records it already has.
_SELECTION = ("benchmarks", "limit", "data_dir")


def _eval_done(folder: Path, ecfg: Any) -> bool:
    summary, saved = folder / "summary.json", folder / "config.json"
    if not (summary.exists() and saved.exists() and read_json(summary).get("complete", True)):
        return False
    old, new = read_json(saved).get("config", {}), to_dict(ecfg)
    changed = [k for k in _SELECTION if old.get(k) != new.get(k)]
    if changed:
        logger.info("%s: %s changed, evaluating again (finished records are reused)", folder, ", ".join(changed))
    return not changed


@writes_output("run", kind="folder")
def main(cfg: RunConfig) -> int:
    from . import evaluate, report, sample, sft, train
    from .utils import require_single_process

    require_single_process("run")

    run = Path(cfg.output)
    run.mkdir(parents=True, exist_ok=True)
    saved = run / "run_config.json"
    if saved.exists():
        old = read_json(saved).get("config", {})
        changed = {k: (old.get(k), v) for k, v in to_dict(cfg).items() if k in old and old.get(k) != v}
        if changed:
            logger.warning("settings differ from this run folder's earlier run (finished stages are kept): %s",
                           ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    write_json(saved, {"config": to_dict(cfg), "environment": environment_info()})
    data, eval_dir = generator_fallback(cfg)
    if data is None and eval_dir is None:
        eval_dir = str(write_heldout(run, cfg.eval_limit or 200))
    stage = StageRunner(run)
    samples = run / "samples.jsonl"
    common = {"dtype": cfg.dtype, "device": cfg.device}

    with run_flags(SAMPLE_FLAGS):
        scfg = resolve(sample.SampleConfig, cli={
            "output": str(samples), "expert": cfg.expert, "amateur": cfg.amateur, "data": data,
            "max_problems": cfg.max_problems, "shuffle_seed": cfg.shuffle_seed, "max_new_tokens": cfg.max_new_tokens,
            "batch_size": cfg.sample_batch_size, "alpha": cfg.alpha, "beta": cfg.beta, "selection": cfg.selection,
            "contrast": cfg.contrast, "allow_vocab_mismatch": cfg.allow_vocab_mismatch, **common})
        stage("sample", lambda: sample.manifest_path(samples).exists() and read_json(
            sample.manifest_path(samples)).get("complete", False), lambda: sample.main(scfg))

    tcfg = resolve(train.TrainConfig, cli={
        "samples": str(samples), "output": str(run / "adapter"), "expert": cfg.expert,
        "steps_per_update": cfg.steps_per_update, "max_steps": cfg.max_steps, "epochs": cfg.epochs,
        "lr": cfg.lr, "lr_scheduler": cfg.lr_scheduler, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
        "lora_targets": cfg.lora_targets, "save_every": cfg.save_every, "keep_checkpoints": None,
        "dtype": cfg.dtype})
    stage("train", lambda: (run / "adapter" / "summary.json").exists(), lambda: train.main(tcfg))

    merged = run / "merged"
    mcfg = resolve(train.MergeConfig, cli={"expert": cfg.expert, "adapter": str(run / "adapter"),
                                            "output": str(merged)})
    stage("merge", lambda: (merged / "config.json").exists() and any(merged.glob("*.safetensors")),
          lambda: train.merge_main(mcfg))

    def eval_cfg(model: str, out: Path, **extra: Any) -> Any:
        return resolve(evaluate.EvalConfig, cli={
            "model": model, "benchmarks": cfg.eval_benchmarks, "data_dir": eval_dir, "output": str(out),
            "limit": cfg.eval_limit, "prompt": cfg.eval_prompt, "max_new_tokens": cfg.eval_max_new_tokens,
            "batch_size": cfg.eval_batch_size, **common, **extra})

    for name, model in (("base", cfg.expert), ("tuned", str(merged))):
        out = run / "eval" / name
        with run_flags(EVAL_FLAGS):
            ecfg = eval_cfg(model, out)
            stage(f"eval_{name}", lambda out=out, ecfg=ecfg: _eval_done(out, ecfg),
                  lambda ecfg=ecfg: evaluate.main(ecfg))

    if cfg.with_sft:
        with run_flags(SFT_FLAGS):
            sfcfg = resolve(sft.SFTConfig, cli={
                "output": str(run / "sft"), "expert": cfg.expert, "data": data, "max_problems": cfg.max_problems,
                "shuffle_seed": cfg.shuffle_seed, "samples_per_problem": cfg.sft_samples_per_problem,
                "temperature": cfg.sft_temperature, "max_new_tokens": cfg.sft_max_new_tokens,
                "epochs": cfg.sft_epochs, "batch_size": cfg.eval_batch_size,
                "lr": cfg.lr, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_targets": cfg.lora_targets,
                **common})
            stage("sft", lambda: (run / "sft" / "summary.json").exists(), lambda: sft.main(sfcfg))
        with run_flags(EVAL_FLAGS):
            ecfg = eval_cfg(cfg.expert, run / "eval" / "sft", adapter=str(run / "sft" / "adapter"))
            stage("eval_sft", lambda: _eval_done(run / "eval" / "sft", ecfg), lambda: evaluate.main(ecfg))

    if cfg.perplexity_problems > 0:
        stage("perplexity", lambda: (run / "perplexity.json").exists(),
              lambda: perplexity_across_checkpoints(cfg, run, eval_dir))

    report_path = report.write_report(run)
    t = stage.timings
    lines = [f"  {k:12s} {v / 60:6.1f} min" for k, v in t.items()]
    logger.info("stage times:\n%s\n  %-12s %6.1f min\nreport: %s", "\n".join(lines), "total",
                sum(t.values()) / 60, report_path)
    print(report_path)
    return 0


def perplexity_across_checkpoints(cfg: RunConfig, run: Path, eval_dir: str | None) -> int:
    """Gold-answer perplexity of held-out problems for the base expert, each checkpoint and the final adapter."""
    from peft import PeftModel

    from .evaluate import load_benchmark
    from .models import load_model
    from .problems import Problem
    from .report import gold_perplexity
    from .sample import DEFAULT_SYSTEM_PROMPT

    if "gsm8k" not in cfg.eval_benchmarks:
        write_json(run / "perplexity.json", {"skipped": "needs gsm8k solutions"})
        return 0
    rows = load_benchmark("gsm8k", eval_dir, limit=cfg.perplexity_problems)
    # The gold text is the reference solution (its reasoning, without the final "#### n" line).
    problems = [Problem(str(i), r["question"], None, r["answer"].split("####")[0].strip()) for i, r in
                enumerate(rows)]
    base = load_model(cfg.expert, dtype=cfg.dtype, device=cfg.device)
    points = [("base", 0, None)]
    adapter = run / "adapter"
    for d in sorted(adapter.glob("step-*")):
        if any(d.rglob("adapter_config.json")):
            points.append((d.name, int(d.name.split("-")[1]), d))
    points.append(("final", read_json(adapter / "summary.json").get("updates", 0), adapter))
    out = []
    for name, step, path in points:
        model = base.model
        if path is not None:
            top = path / "adapter_config.json"
            cfg_dir = path if top.exists() else next(path.rglob("adapter_config.json")).parent
            model = PeftModel.from_pretrained(base.model, str(cfg_dir)).eval()
        nll, ppl = gold_perplexity(model, base.tokenizer, problems, DEFAULT_SYSTEM_PROMPT)
        out.append({"name": name, "step": step, "mean_nll": nll, "perplexity": ppl})
        if path is not None:
            base.model = model.unload()
        logger.info("gold perplexity %s: %.3f", name, ppl)
    write_json(run / "perplexity.json", {"checkpoints": out, "problems": len(problems)})
    return 0
