"""The expertise-gap study (issue 16): where does LightReasoner pay on the models this machine can run?

Every arm is an expert tuned with one amateur, evaluated on the whole GSM8K test and paired against its base:

    expert                        amateurs
    qwen2.5-coder-0.5b-instruct   smollm2-135m-instruct, gemma-3-270m, self:LAYER
    qwen2.5-coder-1.5b-instruct   qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct, self:LAYER
                                  (+ the 1.5B/0.5B pair at the paper's budget)

Budgets: ``embedded`` = the default run's (128 problems, 100 updates of 16, lr 1e-4 constant); ``paper`` = the
paper's (1,000 problems, 1,000 updates of 16, lr 5e-5 with linear decay). Sampling otherwise at the stage defaults
(alpha 0.2, beta 0.4, 128-token prefixes); the tuned expert is evaluated with its adapter (no merged copy on disk).
Every evaluation: whole GSM8K test, the chat prompt (the toolkit's raw qwen25-math prompt for Gemma-3-270M, which
has no chat template), greedy, 512 new tokens, 64 slots (batch-invariant).

**The gap** of an arm is the expert's base accuracy minus the amateur's own accuracy on the same test. The chosen
early layer's whole-test accuracy is measured last (an early exit may ramble to the 512-token limit, so it may cost
most per problem); until then the table gives that arm's gap on the 100 train problems of the layer rule, marked †.

**The early layer** (``self:LAYER``) is chosen by a rule fixed before any test accuracy is seen: on the first 100
GSM8K *train* problems, the target is the accuracy of the expert's best external amateur (the most accurate one in
its row above); layers are scanned downward from the last but one in steps of 2 and the scan stops after the first
layer below the target; the scanned layer whose accuracy is closest to the target is chosen (ties: the deeper).

Each job is a stage command (or, for an early exit, an in-process evaluation) writing its own folder under
``--root`` (eval/<model>, layers/<model>, layers/<expert>__scan/layerNN, arms/<arm>/{sample,train,eval},
eval/<expert>__self), done when its meta.json is there; every one resumes, so ``run`` continues where a killed run
stopped. ``plan`` prints the commands and what is done; ``table`` writes gap_study.json / .md and gain_vs_gap.png
into --root from the finished folders; its hours are the meta.json ``seconds`` (wall clock summed over resumed
pieces, on 2 cores; the study's total adds a running job's time so far, from its ``.started.json``).

**Lost folders.** The folders of sessions 8-14 were lost when session 15 began on a new machine. ``--root``'s
``recorded.json`` keeps their counts as RESULTS.md recorded them (right answers, the pairing's discordant counts,
kept steps, hours); ``table`` recomputes those arms' figures from the counts with the same statistics and marks them
‡. A folder that exists and is finished is always read instead.

    python benchmarks/gap_study.py plan
    python benchmarks/gap_study.py run [--only SUBSTRING]
    python benchmarks/gap_study.py table
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

E05, E15 = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"
SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"
SELF = "self"  # the chosen early layer, resolved from ROOT/layers/<expert>/choice.json
AMATEURS = {E05: [SMOL, GEMMA, SELF], E15: [E05, SMOL, SELF]}
MAX_NEW_TOKENS, SLOTS = 512, 64  # every evaluation's (the stage commands' and the in-process early exits')
EVAL = ["--benchmarks", "gsm8k", "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", str(SLOTS)]
BUDGETS = {"embedded": ["--max-steps", "100", "--lr", "1e-4", "--lr-scheduler", "constant"],
           "paper": ["--max-steps", "1000", "--lr", "5e-5", "--lr-scheduler", "linear"]}
PROBLEMS = {"embedded": 128, "paper": 1000}
LAYER_PROBLEMS = 100
NO_CHAT_TEMPLATE = {GEMMA}  # evaluated with the toolkit's raw prompt (its <bos> added); sampled with a plain one


@dataclass(frozen=True)
class Arm:
    expert: str
    amateur: str
    budget: str = "embedded"

    @property
    def name(self) -> str:
        return f"{short(self.expert)}__{short(self.amateur)}__{self.budget}"


ARMS = [Arm(e, a) for e, amateurs in AMATEURS.items() for a in amateurs] + [Arm(E15, E05, "paper")]


def short(spec: str) -> str:
    return spec.replace("qwen2.5-coder-", "coder-").replace("-instruct", "").replace(":", "")


@dataclass
class Job:
    name: str
    folder: Path
    run: Callable[[], None]
    describe: str

    def done(self) -> bool:
        return (self.folder / "meta.json").exists()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightreasoner", *args]


def command_job(name: str, folder: Path, argv_of: Callable[[], list[str]]) -> Job:
    def run() -> None:
        argv = argv_of()
        print("$", " ".join(argv[2:]), flush=True)
        subprocess.run(argv, check=True)
    try:
        shown = " ".join(argv_of()[2:])
    except FileNotFoundError as e:  # an argument that an earlier job decides (the chosen layer)
        shown = f"(after an earlier job: {e})"
    return Job(name, folder, run, shown)


def chosen_layer(root: Path, expert: str) -> str:
    choice = scan_folder(root, expert) / "choice.json"
    if not choice.exists():
        raise FileNotFoundError(f"{choice} (the layer scan) is not written yet")
    return f"self:{json.loads(choice.read_text())['layer']}"


def resolve(root: Path, arm: Arm) -> str:
    return chosen_layer(root, arm.expert) if arm.amateur == SELF else arm.amateur


def train_problems_dir(root: Path) -> Path:
    """The first LAYER_PROBLEMS GSM8K train problems in the toolkit's layout (DIR/gsm8k/test.jsonl)."""
    import lightreasoner.data as data

    out = root / "layers" / "data"
    path = out / "gsm8k" / "test.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        src = Path(data.__file__).with_name("gsm8k_train.jsonl.gz")
        with gzip.open(src, "rt") as fh:
            rows = [json.loads(line) for _, line in zip(range(LAYER_PROBLEMS), fh)]
        path.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n"
                                for r in rows))
    return out


def eval_job(root: Path, name: str, model_of: Callable[[], list[str]], folder: Path, *extra: str) -> Job:
    def argv() -> list[str]:
        model = model_of()
        prompt = "qwen25-math" if model[1] in NO_CHAT_TEMPLATE else "chat"
        return cli("eval", *model, "--prompt", prompt, *EVAL, *extra, "--output", str(folder))
    return command_job(name, folder, argv)


def view_eval(expert: str, layer: int, folder: Path, data_dir: Path | None) -> float:
    """Accuracy of the expert's early exit at ``layer`` on GSM8K (the test, or ``data_dir``'s problems), evaluated
    in process (``self:LAYER`` is an amateur spec, not an eval model) as a stage folder (:class:`layout.StageRun`:
    resumable, its time summed over attempts): summary.json (its ``average``, as `lightreasoner eval` writes),
    then meta.json."""
    from lightreasoner import layout
    from lightreasoner.benchmarks import load_benchmark
    from lightreasoner.evaluation import EvalParams, evaluate_model
    from lightreasoner.models import load_amateur, load_model
    from lightreasoner.utils import write_json

    model = f"self:{layer} of {expert}"
    ident = layout.identity("view-eval", {"model": model, "max_new_tokens": MAX_NEW_TOKENS, "slots": SLOTS},
                            {"data": str(data_dir) if data_dir else "gsm8k test"})
    with layout.StageRun(folder, ident) as stage:
        if not stage.done:
            stage.start()
            view = load_amateur(f"self:{layer}", load_model(expert))
            params = EvalParams(prompt="chat", max_new_tokens=MAX_NEW_TOKENS, batch_size=SLOTS)
            result = evaluate_model(view.model, view.tokenizer, "gsm8k", load_benchmark("gsm8k", data_dir), params,
                                    output_path=folder / "gsm8k.jsonl")
            result.pop("records", None)
            write_json(folder / "summary.json", {"average": result["accuracy"], "gsm8k": result})
            stage.finish(config={}, counts={"n": result["n"], "correct": result["correct"]}, extra={"model": model})
    return float(json.loads((folder / "summary.json").read_text())["average"])


def layer_order(n_layers: int) -> list[int]:
    """The layers the scan visits, in order: the last but one, then down in steps of 2."""
    return list(range(n_layers - 2, 0, -2))


def choose_layer(scanned: dict[int, float], target: float) -> int:
    """The scanned layer whose accuracy is closest to ``target``; ties go to the deeper layer."""
    return min(scanned, key=lambda k: (abs(scanned[k] - target), -k))


def scan_layers(root: Path, expert: str) -> None:
    """The stated rule (module docstring): scan down from L-2 in steps of 2 until below the target."""
    from transformers import AutoConfig

    from lightreasoner.embedded import ensure_checkpoint

    externals = [a for a in AMATEURS[expert] if a != SELF]
    target = max(json.loads((root / "layers" / short(a) / "summary.json").read_text())["average"]
                 for a in externals)
    n_layers = AutoConfig.from_pretrained(ensure_checkpoint(expert)).num_hidden_layers
    folder = scan_folder(root, expert)
    scanned: dict[int, float] = {}
    for layer in layer_order(n_layers):
        scanned[layer] = view_eval(expert, layer, folder / f"layer{layer:02d}", train_problems_dir(root))
        print(f"{expert} layer {layer}: {scanned[layer]:.1f} (target {target:.1f})", flush=True)
        if scanned[layer] < target:
            break
    (folder / "choice.json").write_text(json.dumps({
        "layer": choose_layer(scanned, target), "target": target, "target_from": externals, "scanned": scanned,
        "rule": "closest to the best external amateur's accuracy on the first 100 GSM8K train problems; scan "
                "down from L-2 in steps of 2, stop after the first layer below the target; ties: deeper"},
        indent=1))
    (folder / "meta.json").write_text(json.dumps({"done": True}))


def jobs(root: Path) -> list[Job]:
    out: list[Job] = []
    models = sorted({*AMATEURS, *(a for v in AMATEURS.values() for a in v if a != SELF)})
    for m in models:  # every model's own accuracy: the bases and the gaps
        out.append(eval_job(root, f"eval {m}", lambda m=m: ["--model", m], root / "eval" / short(m)))
    for m in models:  # the same, on the layer-choice train problems
        out.append(eval_job(root, f"layer-target {m}", lambda m=m: ["--model", m],
                            root / "layers" / short(m), "--data-dir", str(root / "layers" / "data")))
    for e in AMATEURS:
        out.append(Job(f"layer scan {e}", scan_folder(root, e), lambda e=e: scan_layers(root, e),
                       f"in-process: self:L for L = {'L-2, L-4, ...'} on {LAYER_PROBLEMS} train problems"))
    for arm in ARMS:
        d = root / "arms" / arm.name
        out.append(command_job(f"sample {arm.name}", d / "sample", lambda arm=arm, d=d: cli(
            "sample", "--expert", arm.expert, "--amateur", resolve(root, arm), "--data", "gsm8k",
            "--max-problems", str(PROBLEMS[arm.budget]), "--batch-size", "32",
            "--output", str(d / "sample" / "samples.jsonl"))))
        out.append(command_job(f"train {arm.name}", d / "train", lambda arm=arm, d=d: cli(
            "train", "--expert", arm.expert, "--samples", str(d / "sample" / "samples.jsonl"),
            *BUDGETS[arm.budget], "--output", str(d / "train"))))
        out.append(eval_job(root, f"eval {arm.name}", lambda arm=arm, d=d: [
            "--model", arm.expert, "--adapter", str(d / "train")], d / "eval"))
    for e in AMATEURS:  # last, as they cost most per problem: the chosen layer's own accuracy on the whole test
        out.append(Job(f"eval self-layer {e}", self_eval_folder(root, e),
                       lambda e=e: view_eval(e, int(chosen_layer(root, e).split(":")[1]),
                                             self_eval_folder(root, e), None),
                       f"in-process: the chosen self:LAYER of {e} on the whole GSM8K test"))
    return out


def scan_folder(root: Path, expert: str) -> Path:
    """The layer scan's folder (one eval folder per scanned layer, choice.json); apart from the expert's own
    layer-target eval folder, root/layers/<expert>, whose meta.json would otherwise read as the scan's."""
    return root / "layers" / f"{short(expert)}__scan"


def self_eval_folder(root: Path, expert: str) -> Path:
    return root / "eval" / f"{short(expert)}__self"


def run(root: Path, only: str | None) -> None:
    if not (root / "layers" / "data").exists():
        train_problems_dir(root)
    for job in jobs(root):
        if only and only not in job.name:
            continue
        if job.done():
            print(f"done: {job.name}")
            continue
        print(f"== {job.name} ({time.strftime('%H:%M:%S')})", flush=True)
        t0 = time.perf_counter()
        job.run()
        print(f"== {job.name}: {(time.perf_counter() - t0) / 3600:.2f} h", flush=True)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def accuracy(folder: Path) -> float | None:
    """The eval folder's GSM8K accuracy (points, unrounded: correct / n), or None until it is finished."""
    summary = read_json(folder / "summary.json") if (folder / "meta.json").exists() else None
    if summary is None:
        return None
    gsm8k = (summary.get("benchmarks") or summary)["gsm8k"]  # an eval's summary, or view_eval's
    return 100 * gsm8k["correct"] / gsm8k["n"]


RECORDED = "recorded.json"  # {"why", "wall_hours_sessions_8_14", "folders": {path under root: counts}}


def recorded(root: Path, folder: Path) -> dict | None:
    """A lost folder's counts as RESULTS.md recorded them (root/:data:`RECORDED`), or None. Only for a folder that is
    not finished here: a folder made again is read live."""
    if (folder / "meta.json").exists():
        return None
    return (read_json(root / RECORDED) or {}).get("folders", {}).get(folder.relative_to(root).as_posix())


def accuracy_or_recorded(root: Path, folder: Path) -> float | None:
    rec = recorded(root, folder)
    return 100 * rec["correct"] / rec["n"] if rec else accuracy(folder)


def recorded_arm(rec: dict) -> dict:
    """A lost arm's figures from its recorded counts, computed as :func:`compare_runs` computes a live arm's."""
    from lightreasoner.stats import paired_counts

    ao, bo = rec["base_only"], rec["tuned_only"]
    if rec["base_correct"] - ao + bo != rec["correct"]:
        raise ValueError(f"{RECORDED}: {rec} does not add up (base_correct - base_only + tuned_only != correct)")
    gsm8k = paired_counts(rec["n"], rec["base_correct"], rec["correct"], ao, bo)
    return {"base": 100 * rec["base_correct"] / rec["n"], "tuned": 100 * rec["correct"] / rec["n"],
            "kept_fraction": rec["kept"] / rec["steps"],
            "hours": rec["hours"], "recorded_in_session": rec["session"], "paired": {"benchmarks": {"gsm8k": gsm8k}}}


UNRECORDED = "unrecorded_seconds.json"  # {"seconds": S, "why": ...}: a killed piece's time its stage could not keep


def hours(*folders: Path, running: bool = False) -> float:
    """Wall-clock hours of finished jobs, summed over resumed pieces: each folder's meta.json ``seconds``, plus the
    :data:`UNRECORDED` seconds written beside it by hand for a piece killed outright before the stages kept their
    time while working (session 9's end cut the 1.5B base evaluation; its time is taken from the log). With
    ``running``, a job not finished counts too: the time its attempts so far kept in ``.started.json``."""
    from lightreasoner.layout import META, STARTED

    def seconds(f: Path) -> float:
        if (f / META).exists():
            return read_json(f / META).get("seconds", 0.0) + (read_json(f / UNRECORDED) or {}).get("seconds", 0.0)
        return (read_json(f / STARTED) or {}).get("seconds", 0.0) if running else 0.0
    return sum(seconds(f) for f in folders) / 3600


def arm_row(root: Path, arm: Arm) -> dict:
    """One arm's figures: the gap (on the whole test; on the 100 train problems when the amateur's whole-test
    accuracy is not there, marked ``gap_on``), kept-step rate, accuracy after, the pairing against the base."""
    from lightreasoner.stats import compare_runs

    d = root / "arms" / arm.name
    base, tuned = root / "eval" / short(arm.expert), d / "eval"
    amateur, am_test, am_train = arm.amateur, None, None
    if arm.amateur == SELF:
        choice = read_json(scan_folder(root, arm.expert) / "choice.json")
        if choice:
            amateur = f"self:{choice['layer']}"
            am_train = {int(k): v for k, v in choice["scanned"].items()}[choice["layer"]]
        am_test = accuracy(self_eval_folder(root, arm.expert))
    else:
        am_test = accuracy_or_recorded(root, root / "eval" / short(amateur))
        am_train = accuracy_or_recorded(root, root / "layers" / short(amateur))
    sample = read_json(d / "sample" / "meta.json")
    row = {"arm": arm.name, "expert": arm.expert, "amateur": amateur, "budget": arm.budget,
           "base": accuracy_or_recorded(root, base),
           "base_train100": accuracy_or_recorded(root, root / "layers" / short(arm.expert)),
           "amateur_accuracy": am_test, "amateur_train100": am_train,
           "kept_fraction": sample["counts"]["kept_fraction"] if sample else None, "tuned": accuracy(tuned),
           "hours": round(hours(d / "sample", d / "train", d / "eval"), 2) if accuracy(tuned) is not None
           else None}  # an arm's hours once it is finished
    lost = None if sample else recorded(root, d)
    if lost:
        row.update(recorded_arm(lost))  # its base too: the evaluation it was paired against
    if row["base"] is not None and am_test is not None:
        row["gap"], row["gap_on"] = row["base"] - am_test, "test"
    elif row["base_train100"] is not None and am_train is not None:
        row["gap"], row["gap_on"] = row["base_train100"] - am_train, "train100"
    else:
        row["gap"], row["gap_on"] = None, None
    if not lost and (base / "meta.json").exists() and (tuned / "meta.json").exists():
        row["paired"] = compare_runs(base, tuned)
    return row


def total_hours(root: Path) -> float:
    """Wall-clock hours of every job of the study (the shared evaluations, the layer scans, the arms; a running
    job's time so far), plus the recorded wall clock of the sessions whose folders were lost and the recorded time
    of their unfinished pieces (:data:`RECORDED`)."""
    folders = [job.folder for job in jobs(root)]
    scans = [f for f in (root / "layers").glob("*__scan/layer*") if f.is_dir()]
    rec = read_json(root / RECORDED) or {}
    before = rec.get("wall_hours_sessions_8_14", 0.0) + rec.get("lost_unfinished_hours", 0.0)
    return round(before + hours(*folders, *scans, running=True), 2)


def table(root: Path) -> None:
    rows = [arm_row(root, arm) for arm in ARMS]
    total = total_hours(root)
    (root / "gap_study.json").write_text(json.dumps({"arms": rows, "wall_hours": total,
                                                     "core_hours": round(2 * total, 2)}, indent=1))
    lines = ["| expert | amateur | budget | base | amateur acc | gap | kept | tuned | change (95% CI) | p "
             "| detectable | hours |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        p = (r.get("paired") or {}).get("benchmarks", {}).get("gsm8k", {})
        ci = p.get("delta_ci95")
        mark = " †" if r["gap_on"] == "train100" else ""
        lost = " ‡" if r.get("recorded_in_session") else ""
        lines.append(f"| {short(r['expert'])} | {r['amateur']}{lost} | {r['budget']} | {fmt(r['base'])} | "
                     f"{fmt(r['amateur_accuracy'])} | {fmt(r['gap'])}{mark} | {fmt(r['kept_fraction'], pct=True)} | "
                     f"{fmt(r['tuned'])} | {'-' if p.get('delta') is None else format(p['delta'], '+.1f')}"
                     + (f" ({ci[0]:+.1f}, {ci[1]:+.1f})" if ci else "")
                     + f" | {fmt(p.get('p_value'))} | {fmt(p.get('min_detectable_80'))} | "
                     + ("running" if r["hours"] is None and r["kept_fraction"] is not None
                        else "-" if r["hours"] is None else f"{r['hours']:.2f}") + " |")
    lines += ["", "Accuracies and gaps in points on the whole GSM8K test (1,319); † gap on the first 100 GSM8K "
              "train problems (the early layer's whole-test accuracy, the plan's last job, was not measured). change: tuned - base, with "
              "the paired Wald 95% interval; p: exact two-sided McNemar test; detectable: the smallest change this "
              "comparison detects with about 80% power at the 5% level (Connor 1987). hours: the arm's sample + "
              f"train + eval, wall clock on 2 cores, once the arm is finished. ‡ figures recomputed from the counts "
              f"RESULTS.md recorded when the arm was run (its folders were lost with the machine; {RECORDED}). The "
              f"whole study: {total:.1f} wall hours = {2 * total:.1f} core-hours (the 2 cores held; a few "
              f"pieces shared them with the test suite), lost, redone and running work included."]
    (root / "gap_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(root, rows)


def fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"


def plot(root: Path, rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        p = (r.get("paired") or {}).get("benchmarks", {}).get("gsm8k", {})
        if r["gap"] is None or p.get("delta") is None:
            continue
        d, ci = p["delta"], p.get("delta_ci95") or (p["delta"], p["delta"])
        amateur = r["amateur"] if r["amateur"].startswith(SELF) else short(r["amateur"])  # self:20 as in the table
        ax.errorbar(r["gap"], d, yerr=[[d - ci[0]], [ci[1] - d]], fmt="o" if r["gap_on"] == "test" else "s",
                    capsize=3, label=f"{short(r['expert'])} / {amateur} ({r['budget']})"
                                     + (" ‡" if r.get("recorded_in_session") else ""))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("expertise gap: expert base - amateur accuracy (points)\n"
                  "circles: whole GSM8K test; squares: first 100 train problems")
    ax.set_ylabel("GSM8K change after tuning (points, 95% CI)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "gain_vs_gap.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("plan", "run", "table"))
    ap.add_argument("--root", default=os.environ.get("STUDY_ROOT", "/work/runs/study"))
    ap.add_argument("--only", default=None, help="run only jobs whose name contains this")
    args = ap.parse_args()
    root = Path(args.root)
    if args.action == "plan":
        for job in jobs(root):
            layers = sorted(job.folder.glob("layer*"))  # a scan's time is in its layer folders
            took = f" ({hours(job.folder, *layers):.2f} h)" if job.done() else ""
            print(f"[{'x' if job.done() else ' '}] {job.name}{took}\n      {job.describe}")
    elif args.action == "run":
        run(root, args.only)
    else:
        table(root)


if __name__ == "__main__":
    main()
