"""``lightreasoner run``: the method end to end, as a graph of fingerprinted stages.

    sample -> train -> merge -> eval base, eval tuned [-> sft -> eval sft] [-> perplexity] -> report

Each stage is the stage command itself (``sample.main``, ``train.main``, ...) run on a config that ``run`` fills in
from its own options and the stage's section (``--sample.beta``, ``train:`` in YAML). Each writes into its own
folder of the run (:class:`layout.RunLayout`) and writes ``meta.json`` there last. Before any work the whole plan
is checked: a stage whose folder holds work of other settings stops the run with every changed setting and the
stages it affects, unless ``--rerun`` (which redoes exactly those: downstream stages change with their inputs); a
finished stage of the same settings is skipped; an unchanged rerun does nothing. The resolved config is saved as
``RUN/config.yaml``, which replays the run (``lightreasoner run --config RUN/config.yaml``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import evaluate, layout, merge, modelcard, report, sample, sft, train
from .api import StageOutput, call, expose
from .evaluate import EvalConfig
from .report import ReportConfig
from .sample import SampleConfig
from .sft import SFTConfig
from .merge import MergeConfig
from .train import TrainConfig
from .benchmarks import data_inputs, load_benchmark
from .config import Checked, flag, flag_prefix, option, to_dict, to_yaml
from .embedded import DEFAULT_AMATEUR, DEFAULT_EXPERT
from .prompts import DEFAULT_SYSTEM_PROMPT
from .utils import InputError, atomic_write, write_json, writes_output

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "embedded"  # the config `run` reads when no --config is given (lightreasoner/configs/)


@dataclass(frozen=True)
class RunConfig(Checked):
    """Run LightReasoner end to end: sample, train, merge, evaluate the base and the tuned expert, report.

    Every option of a stage command is also an option here as --STAGE.FLAG (--sample.beta 0.6, --train.lr 5e-5,
    --eval.limit 150, --sft.samples-per-problem 4); a YAML config takes the same as sections (sample: {beta: 0.6}).
    Without --config, the shipped `embedded` config (sized for a 2-core CPU) applies; --config none gives the
    stage commands' own defaults (the paper's). The resolved config is saved as RUN/config.yaml: replay a run with
    `lightreasoner run --config RUN/config.yaml`.

    example: lightreasoner run --output runs/embedded --sample.beta 0.6 --rerun
    """

    output: str = option("runs/embedded", "run folder (everything goes here; rerun the command to resume)",
                         result=False)
    expert: str = option(DEFAULT_EXPERT, "expert model: embedded name, .gguf file, checkpoint folder or hub id")
    amateur: str = option(DEFAULT_AMATEUR, "amateur model (same forms), or self:LAYER (the expert's own early "
                                           "layers)")
    expert_revision: str | None = option(None, "branch, tag or commit of a hub --expert, for every stage that "
                                               "loads it (none: its main branch)", result=False)
    amateur_revision: str | None = option(None, "branch, tag or commit of a hub --amateur", result=False)
    trust_remote_code: bool = option(False, "allow the models' repositories to run their own code, in every stage "
                                            "(a section's own --STAGE.trust-remote-code allows it there only)",
                                     result=False)
    data: str = option("gsm8k", "training problems: file, toolkit folder, hub id, gsm8k (the shipped GSM8K "
                                "train set) or generated (the built-in generator)")
    dtype: str = option("auto", "model dtype of every stage", choices=("auto", "float32", "bfloat16", "float16"))
    device: str | None = option(None, "device of every stage (default: cuda if available, else cpu)", result=False)
    seed: int = option(42, "seed of training, SFT sampling and evaluation")
    with_sft: bool = option(False, "also run the rejection-sampling SFT baseline and evaluate it")
    perplexity_problems: int = option(32, "held-out GSM8K test problems for the gold-answer perplexity across "
                                          "training checkpoints (0: skip)")
    rerun: bool = option(False, "redo the stages whose settings or inputs changed, and everything downstream",
                         result=False, saved=False)
    print_config: bool = option(False, "print the resolved config as YAML and exit", result=False, saved=False)
    sample: SampleConfig = option(factory=SampleConfig, help="`lightreasoner sample`")
    train: TrainConfig = option(factory=TrainConfig, help="`lightreasoner train`")
    merge: MergeConfig = option(factory=MergeConfig, help="`lightreasoner merge`")
    eval: EvalConfig = option(factory=EvalConfig, help="`lightreasoner eval`, for every model")
    sft: SFTConfig = option(factory=SFTConfig, help="`lightreasoner sft`, with --with-sft")
    report: ReportConfig = option(factory=ReportConfig, help="`lightreasoner report`")

    def validate(self) -> list[str]:
        """Each section as ``run`` fills it in, validated under its own flag names (``--sample.beta``)."""
        from .models import revision_problem

        problems = [] if self.perplexity_problems >= 0 else [
            f"--perplexity-problems must be >= 0, got {self.perplexity_problems}"]
        problems += [p for p in (revision_problem(self.expert, self.expert_revision, flag("expert_revision")),
                                 revision_problem(self.amateur, self.amateur_revision, flag("amateur_revision"))) if p]
        for section, stage_cfg in sections(self).items():
            with flag_prefix(section + "."):
                run_set = {flag(f.name) for f in dataclasses.fields(stage_cfg) if f.metadata.get("run_sets")}
                own = stage_cfg.validate() if hasattr(stage_cfg, "validate") else []
                # what the run sets is checked above, under the run's own flags
                problems += [p for p in own if p.split(":")[0].split(" ")[0] not in run_set]
        return problems


def sections(cfg: RunConfig) -> dict[str, Any]:
    """Each stage's config as ``run`` fills it in: paths from the run layout, the run's own options (expert,
    amateur, data, dtype, device, seed, rerun) over the section's (the evaluation's model is filled per model)."""
    L = layout.RunLayout(cfg.output)
    shared = {"dtype": cfg.dtype, "device": cfg.device, "rerun": cfg.rerun}
    expert = {"expert": cfg.expert, "expert_revision": cfg.expert_revision}

    def remote(section: Any) -> dict[str, bool]:  # the run's --trust-remote-code, or the section's own
        return {"trust_remote_code": cfg.trust_remote_code or section.trust_remote_code}

    return {
        "sample": dataclasses.replace(cfg.sample, output=str(L.samples), **expert, amateur=cfg.amateur,
                                      amateur_revision=cfg.amateur_revision, data=cfg.data, **shared,
                                      **remote(cfg.sample)),
        "train": dataclasses.replace(cfg.train, samples=str(L.samples), output=str(L.train), **expert,
                                     dtype=cfg.dtype, seed=cfg.seed, rerun=cfg.rerun, **remote(cfg.train)),
        "merge": dataclasses.replace(cfg.merge, adapter=str(L.train), output=str(L.merge), **expert,
                                     rerun=cfg.rerun, **remote(cfg.merge)),
        "eval": dataclasses.replace(cfg.eval, output=str(L.eval("base")), seed=cfg.seed, compare=None, **shared,
                                    **eval_model(cfg, cfg.expert, cfg.expert_revision)),
        "sft": dataclasses.replace(cfg.sft, output=str(L.sft), **expert, data=cfg.data, seed=cfg.seed, **shared,
                                   **remote(cfg.sft)),
        "report": dataclasses.replace(cfg.report, run_dir=str(L.root)),
    }


def eval_model(cfg: RunConfig, spec: str, revision: str | None) -> dict[str, Any]:
    """The evaluation section's model fields for one evaluated model (``revision``: the hub model's; none for a
    folder the run wrote)."""
    return {"model": spec, "revision": revision,
            "trust_remote_code": cfg.trust_remote_code or cfg.eval.trust_remote_code}


# ----------------------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Stage:
    """One node of the run: its folder, the config its command runs on, and the identity it must have."""

    name: str
    section: str
    folder: Path
    config: Any
    run: Callable[[Any], int]
    identity: dict

    @property
    def fingerprint(self) -> str:
        return layout.fingerprint(self.identity)


def plan(cfg: RunConfig) -> list[Stage]:
    """Every stage of the run in order, with configs filled in and identities computed (no model is loaded:
    upstream outputs are named by the fingerprints their stages will have)."""
    L = layout.RunLayout(cfg.output)
    F = L.stage_folders()  # each stage's folder, named once (layout)
    filled = sections(cfg)
    scfg, tcfg, mcfg = filled["sample"], filled["train"], filled["merge"]
    s_sample = Stage("sample", "sample", F["sample"], scfg, sample.main, sample.identity(scfg))
    s_train = Stage("train", "train", F["train"], tcfg, train.main, train.identity(tcfg, samples=s_sample.fingerprint))
    s_merge = Stage("merge", "merge", F["merge"], mcfg, merge.merge_main,
                    merge.merge_identity(mcfg, adapter=s_train.fingerprint))
    stages = [s_sample, s_train, s_merge]

    def eval_stage(name: str, spec: str, adapter_dir: str | None = None, **inputs: str) -> Stage:
        revision = cfg.expert_revision if spec == cfg.expert else None
        ecfg = dataclasses.replace(filled["eval"], adapter=adapter_dir, output=str(L.eval(name)),
                                   **eval_model(cfg, spec, revision))
        return Stage(f"eval_{name}", "eval", F[f"eval_{name}"], ecfg, evaluate.main, evaluate.identity(ecfg, **inputs))

    stages += [eval_stage("base", cfg.expert), eval_stage("tuned", str(L.merge), model=s_merge.fingerprint)]
    if cfg.with_sft:
        s_sft = Stage("sft", "sft", F["sft"], filled["sft"], sft.main, sft.identity(filled["sft"]))
        stages += [s_sft, eval_stage("sft", cfg.expert, str(L.sft_adapter), adapter=s_sft.fingerprint)]
    if cfg.perplexity_problems > 0:
        ident = layout.identity("perplexity", {"problems": cfg.perplexity_problems, "dtype": cfg.dtype,
                                               "save_every": cfg.train.save_every},
                                {"train": s_train.fingerprint,
                                 "expert": layout.model_input(cfg.expert, cfg.expert_revision),
                                 "data": data_inputs(("gsm8k",), cfg.eval.data_dir)})
        stages.append(Stage("perplexity", "", F["perplexity"], cfg, perplexity_stage, ident))
    rcfg = filled["report"]
    ident = layout.stage_identity("report", rcfg, {s.name: s.fingerprint for s in stages})
    stages.append(Stage("report", "report", F["report"], rcfg, report_stage, ident))
    return stages


def check_plan(stages: list[Stage], rerun: bool) -> dict[str, layout.StageState]:
    """Each stage's state; without ``rerun``, an :class:`InputError` listing every changed stage (old -> new)."""
    states = {s.name: layout.stage_state(s.folder, s.identity) for s in stages}
    changed = [s for s in stages if states[s.name].status == "changed"]
    if changed and not rerun:
        lines = [f"{s.name} ({s.folder}): {'; '.join(states[s.name].diffs)}" for s in changed]
        raise InputError("this run folder holds stages made with other settings:\n  " + "\n  ".join(lines) +
                         f"\nstages affected: {', '.join(s.name for s in changed)}; pass --rerun to redo exactly "
                         f"those, or choose another --output")
    return states


# ----------------------------------------------------------------------------------------------------------------
# The run


@writes_output("run", kind="folder", single_process=True)
def main(cfg: RunConfig) -> int:
    """``lightreasoner run``: check the whole plan, then run the stages that are not done, in order."""
    if cfg.print_config:
        print(to_yaml(cfg), end="")
        return 0
    stages = plan(cfg)
    states = check_plan(stages, cfg.rerun)
    L = layout.RunLayout(cfg.output)
    atomic_write(L.config, to_yaml(cfg))
    todo = [s for s in stages if states[s.name].status != "done"]
    if not todo:
        logger.info("every stage of %s is done for these settings; nothing to do", L.root)
        print(L.report / "report.md")
        return 0
    logger.info("stages to run: %s (done: %s)", ", ".join(s.name for s in todo),
                ", ".join(s.name for s in stages if s not in todo) or "none")
    for s in todo:
        logger.info("[%s] running", s.name)
        with flag_prefix(f"{s.section}." if s.section else ""):
            rc = s.run(s.config)
        if rc:
            raise InputError(f"stage {s.name} stopped with exit code {rc}; fix the cause and rerun to resume")
        if s.name == "eval_tuned":  # the adapter's and merged model's cards get the measured results
            results = modelcard.eval_results(L.eval("tuned"), L.eval("base"))
            for folder in (L.train, L.merge):
                modelcard.refresh(folder, results)
        if s.name == "eval_sft":  # so does the SFT baseline's adapter (its card is sft/adapter/README.md)
            modelcard.refresh(L.sft, modelcard.eval_results(L.eval("sft"), L.eval("base")))
    print(L.report / "report.md")
    return 0


def run(config: RunConfig | None = None, /, **options: Any) -> StageOutput:
    """The Python API's ``run``: ``lightreasoner run`` on ``config`` (or ``RunConfig(**options)``; its defaults are
    the stage commands' own, as with ``--config none``: :func:`lightreasoner.api.load_config` reads the shipped
    ``embedded`` one). Returns the run folder and each finished stage's ``meta.json``, by stage name."""
    return call(RunConfig, main, config, options, run_output, command="run")


def run_output(cfg: RunConfig) -> StageOutput:
    """The run folder and the meta.json of each of its stages that finished."""
    found = {name: layout.read_meta(folder) for name, folder in layout.RunLayout(cfg.output).stage_folders().items()}
    return StageOutput(Path(cfg.output), {name: meta for name, meta in found.items() if meta is not None})


def report_stage(rcfg: ReportConfig) -> int:
    """The report, as a stage: written into RUN/report/, with its meta.json last."""
    L = layout.RunLayout(rcfg.run_dir)
    stages = plan_from_saved(L)
    ident = layout.stage_identity("report", rcfg, {s.name: s.fingerprint for s in stages if s.name != "report"})
    with layout.StageRun(L.report, ident, rerun=True) as stage:
        stage.start()  # before the first file: a rerun clears the old report here
        t0 = time.perf_counter()
        path = report.write_report(L.root, rcfg.tokenizer, cases=rcfg.cases,
                                   kept_step_examples=rcfg.kept_step_examples)
        stage.finish(config=to_dict(rcfg), counts={"seconds": round(time.perf_counter() - t0, 3)})
    logger.info("report: %s", path)
    return 0


def plan_from_saved(L: layout.RunLayout) -> list[Stage]:
    """The plan of the run whose config is saved in ``L.config``."""
    from .config import load_yaml, resolve

    return plan(resolve(RunConfig, yaml_values=load_yaml(L.config)))


def scheduled_checkpoints(train_dir: Path, save_every: int | None) -> list[tuple[Path, int]]:
    """The checkpoints ``step-NNNNNN/`` of ``train_dir`` at multiples of ``save_every`` that hold an adapter,
    in step order: the curve's points, whatever extra checkpoint a ``--stop-after`` left."""
    out = []
    for d in sorted(train_dir.glob("step-*")):
        step = int(d.name.split("-")[1])
        if save_every and step % save_every == 0 and (d / "adapter" / "adapter_config.json").is_file():
            out.append((d, step))
    return out


def perplexity_stage(cfg: RunConfig) -> int:
    """Gold-answer perplexity of held-out GSM8K test problems for the base expert, each checkpoint and the final
    adapter, into RUN/perplexity/ (meta.json last)."""
    from peft import PeftModel

    from .models import load_model
    from .problems import Problem

    L = layout.RunLayout(cfg.output)
    me = next(s for s in plan(cfg) if s.name == "perplexity")
    with layout.StageRun(L.perplexity, me.identity, rerun=cfg.rerun) as stage:
        if stage.done:
            return 0
        rows = load_benchmark("gsm8k", cfg.eval.data_dir, limit=cfg.perplexity_problems)
        # The gold text is the reference solution (its reasoning, without the final "#### n" line).
        problems = [Problem(str(i), r["question"], None, r["answer"].split("####")[0].strip()) for i, r in
                    enumerate(rows)]
        base = load_model(cfg.expert, dtype=cfg.dtype, device=cfg.device, revision=cfg.expert_revision,
                          trust_remote_code=cfg.trust_remote_code)
        points: list[tuple[str, int, Path | None]] = [("base", 0, None)]
        points += [(d.name, step, d / "adapter") for d, step in scheduled_checkpoints(L.train, cfg.train.save_every)]
        points.append(("final", (layout.read_meta(L.train) or {}).get("counts", {}).get("updates", 0), L.train))
        stage.start()
        out = []
        for name, step, path in points:
            model = base.model if path is None else PeftModel.from_pretrained(base.model, str(path)).eval()
            nll, ppl = report.gold_perplexity(model, base.tokenizer, problems, DEFAULT_SYSTEM_PROMPT)
            out.append({"name": name, "step": step, "mean_nll": nll, "perplexity": ppl})
            if path is not None:
                base.model = model.unload()
            logger.info("gold perplexity %s: %.3f", name, ppl)
        write_json(L.perplexity / "perplexity.json", {"checkpoints": out, "problems": len(problems)})
        stage.finish(config={"problems": cfg.perplexity_problems}, counts={"points": len(out)})
    return 0


expose(evaluate.__name__, EvalConfig, evaluate.main, command="eval")  # callable as lightreasoner.evaluate (.api)
