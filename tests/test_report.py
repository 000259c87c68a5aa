"""`lightreasoner report`: the report of a synthetic run folder, partial folders, and the gold perplexity."""

from __future__ import annotations

import base64
import copy
import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from lightreasoner import cli
from lightreasoner import evaluation as E
from lightreasoner import report as R
from lightreasoner.layout import RunLayout
from lightreasoner.problems import Problem
from lightreasoner.prompts import build_prompt_ids
from lightreasoner.testing import byte_tokenizer, gsm8k_style_rows, tiny_causal_lm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BETA = 0.4
# Known correctness patterns (problem i right?) per benchmark and model.
PATTERNS = {
    "gsm8k": {"base": [i < 4 for i in range(10)],  # 0..3 right
              "tuned": [1 <= i for i in range(10)],  # 1..9 right: 1 base-only (id 0), 6 tuned-only (4..9)
              "sft": [i < 6 for i in range(10)]},
    "math": {"base": [i < 4 for i in range(8)],
             "tuned": [i < 6 for i in range(8)],  # 0 base-only, 2 tuned-only
             "sft": [i < 3 for i in range(8)]},
}
TRAIN_SUMMARY = {"finished": True, "updates": 20, "tuned_tokens": 1234, "kept_steps_seen": 1234,
                 "trajectories": 6, "trajectory_forwards": 40, "forward_tokens": 9876, "kept_steps_in_data": 617,
                 "epochs": 2.0, "first_loss": 1.5, "final_loss": 0.7, "train_time_s": 80.0, "wall_time_s": 95.0,
                 "world_size": 1, "trainable_parameters": 4096, "mode": "lora", "model_dtype": "float32"}
SFT_SUMMARY = {"problems_sampled": 40, "problems_used": 25, "samples": 160, "correct_samples": 60,
               "trajectories": 50, "tuned_tokens": 20000, "time_s": {"sampling": 300.0, "training": 900.0}}
TIMINGS = {"sample": 50.0, "train": 100.0, "merge": 5.0, "eval_base": 30.0, "eval_tuned": 31.0}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def synthetic_records(n: int = 6, seed: int = 0) -> list[dict]:
    """Sample records in `lightreasoner sample`'s format; every token id is a lower-case letter's."""
    rng = random.Random(seed)
    letters = byte_tokenizer()("abcdefghijklmnopqrstuvwxyz")["input_ids"]
    recs = []
    for i in range(n):
        T = rng.randint(10, 24)
        kl = [round(rng.lognormvariate(-1.5, 1.5), 6) for _ in range(T)]
        kl[0] = 0.0  # exercise the log-scale floor
        agree = [k < 0.5 or rng.random() < 0.2 for k in kl]
        steps = []
        for t in range(1, T):
            if kl[t] >= BETA:
                k = rng.randint(1, 4)
                w = [rng.random() + 0.1 for _ in range(k)]
                steps.append({"pos": t, "kl": kl[t], "token_ids": rng.sample(letters, k),
                              "weights": [x / sum(w) for x in w],
                              "expert_top": [[rng.choice(letters), 0.5 / (j + 1)] for j in range(5)],
                              "amateur_top": [[rng.choice(letters), 0.4 / (j + 1)] for j in range(5)]})
        recs.append({"id": f"p{i}", "question": f"What is {i} + {i}?", "prompt_ids": [72, 105],
                     "completion_ids": [rng.choice(letters) for _ in range(T)], "kl": kl,
                     "expert_entropy": [round(rng.uniform(0, 2), 6) for _ in range(T)],
                     "amateur_entropy": [round(rng.uniform(0, 5), 6) for _ in range(T)],
                     "top1_agree": agree, "steps": steps})
    return recs


def write_meta(folder: Path, stage: str, seconds: float, **extra) -> None:
    """A stage folder's meta.json, as `layout.finish` writes it (last)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"stage": stage, "fingerprint": f"sha256:{stage}", "identity": {"stage": stage}, "config": {},
            "counts": {}, "seconds": seconds, "finished": 0.0, "versions": {"python": "3.11"}, **extra}
    (folder / "meta.json").write_text(json.dumps(meta))


def write_samples(run: Path, records: list[dict], expert_spec: str = "/nonexistent/expert",
                  seconds: float = 12.0) -> None:
    L = RunLayout(run)
    write_jsonl(L.samples, records)
    write_meta(L.sample, "sample", seconds, complete=True,
               config={"alpha": 0.2, "beta": BETA, "max_new_tokens": 24},
               expert={"spec": expert_spec, "fingerprint": "sha256:x"}, amateur={"spec": "/nonexistent/a"},
               counts={"problems": len(records)}, timings={"wall_s": 12.0})


def eval_record(benchmark: str, i: int, correct: bool, model: str) -> dict:
    gold = str(i * 2)
    return {"id": str(i), "prompt": f"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ{benchmark}{i}: what is "
                                    f"{i} + {i}?<|im_end|>\n<|im_start|>assistant\n",
            "completion": f"{model} reasons about {benchmark} {i} " + "x" * 400
                          + f" \\boxed{{{gold if correct else -1}}}",
            "pred": gold if correct else "-1", "gold": gold, "correct": correct, "new_tokens": 50,
            "finish_reason": "eos", "seconds": 0.1, "error": None}


def write_eval(run: Path, model: str) -> None:
    folder = RunLayout(run).eval(model)
    per = {}
    for b, pats in PATTERNS.items():
        recs = [eval_record(b, i, c, model) for i, c in enumerate(pats[model])]
        write_jsonl(folder / f"{b}.jsonl", recs)
        per[b] = E.summarize_records(b, recs)
    (folder / "summary.json").write_text(json.dumps(E.overall_summary(per)))
    if f"eval_{model}" in TIMINGS:
        write_meta(folder, "eval", TIMINGS[f"eval_{model}"])


def write_adapter(run: Path, summary: bool = True) -> None:
    adapter = RunLayout(run).train
    metrics = [{"update": u, "epoch": u / 10, "loss": 1.5 / (1 + 0.1 * u), "lr": 5e-5, "grad_norm": 0.5,
                "kept_steps_per_s": 10.0, "tokens_per_s": 100.0, "peak_memory_gb": 0.0,
                "kept_steps_seen": 16 * u, "elapsed_s": 4.0 * u} for u in range(2, 21, 2)]
    write_jsonl(adapter / "metrics.jsonl", metrics)
    if summary:
        (adapter / "summary.json").write_text(json.dumps(TRAIN_SUMMARY))
        write_meta(adapter, "train", TIMINGS["train"], counts={"updates": TRAIN_SUMMARY["updates"]})


@pytest.fixture
def full_run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    L = RunLayout(run)
    L.config.write_text(yaml.safe_dump({"expert": "e", "amateur": "a", "with_sft": True, "sample": {"beta": BETA}}))
    write_samples(run, synthetic_records(), seconds=TIMINGS["sample"])
    write_adapter(run)
    write_meta(L.merge, "merge", TIMINGS["merge"])
    for m in ("base", "tuned", "sft"):
        write_eval(run, m)
    L.sft.mkdir()
    (L.sft / "summary.json").write_text(json.dumps(SFT_SUMMARY))
    L.perplexity.mkdir()
    (L.perplexity / "perplexity.json").write_text(json.dumps({"problems": 7, "checkpoints": [
        {"name": "base", "step": 0, "mean_nll": 1.2, "perplexity": math.exp(1.2)},
        {"name": "step-000010", "step": 10, "mean_nll": 1.1, "perplexity": math.exp(1.1)},
        {"name": "final", "step": 20, "mean_nll": 1.0, "perplexity": math.exp(1.0)}]}))
    return run


def table_row(md: str, first_cell: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def section(md: str, heading: str) -> str:
    """The text from a heading to the next heading of the same or higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = md.index(heading + "\n")
    nxt = re.search(r"^#{1,%d} " % level, md[start + len(heading):], flags=re.M)
    return md[start:start + len(heading) + (nxt.start() if nxt else len(md))]


def expected_gain(model: str) -> float:
    """Mean over benchmarks of (model accuracy - base accuracy), in points, from the known patterns."""
    diffs = [100 * (sum(p[model]) - sum(p["base"])) / len(p["base"]) for p in PATTERNS.values()]
    return sum(diffs) / len(diffs)


def mcnemar_by_hand(b: int, c: int) -> float:
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)


# ------------------------------------------------------------------------------------------------ full report


def test_full_report_efficiency_accuracy_and_tests(full_run):
    path = R.write_report(full_run, tokenizer=byte_tokenizer())
    md = path.read_text()
    assert "could not be built" not in md

    lr = table_row(md, "LightReasoner")
    # total time = sampling + training stage times; problems from the manifest; tuned tokens from the summary
    assert lr[1] == R.fmt_duration(TIMINGS["sample"] + TIMINGS["train"]) == "2.5 min"
    assert lr[4] == "6" and lr[5] == "1,234"
    assert float(lr[6]) == pytest.approx(expected_gain("tuned"), abs=0.051) and lr[6].startswith("+")
    sft = table_row(md, "SFT")
    assert sft[1] == R.fmt_duration(1200.0) and sft[4] == "40" and sft[5] == "20,000"
    assert float(sft[6]) == pytest.approx(expected_gain("sft"), abs=0.051)
    ratio = table_row(md, "LightReasoner / SFT")
    assert ratio[1] == f"{150 / 1200:.2f}x" and ratio[5] == f"{1234 / 20000:.2f}x"

    paired = section(md, "### Paired test: LightReasoner vs base expert")
    gsm = table_row(paired, "gsm8k")
    # discordant: base-only right 1 (id 0), tuned-only right 6 (ids 4..9)
    assert gsm[6:9] == ["1", "6", f"{mcnemar_by_hand(1, 6):.3g}"] and mcnemar_by_hand(1, 6) == 0.125
    assert gsm[2] == "40.0" and gsm[3] == "90.0"
    lo, hi = (float(x) for x in gsm[5].split(" .. "))
    assert lo < float(gsm[4]) < hi  # the interval is around the +50.0 change
    mth = table_row(paired, "math")
    assert mth[6:9] == ["0", "2", f"{mcnemar_by_hand(0, 2):.3g}"]
    pooled = table_row(paired, "**pooled**")
    assert pooled[6:9] == ["1", "8", f"{mcnemar_by_hand(1, 8):.3g}"]
    assert float(pooled[4]) == round(100 * 7 / int(pooled[1]), 1)  # its own change: 8 - 1 of the pooled problems
    assert table_row(paired, "**average**")[5:] == ["", "", "", ""]  # the mean of benchmarks: no test of its own
    assert "### Paired test: SFT vs base expert" in md
    head_to_head = section(md, "### Paired test: LightReasoner vs SFT")  # the paper's comparison
    assert "only SFT right" in head_to_head and "only LightReasoner right" in head_to_head
    row = table_row(head_to_head, "gsm8k")
    assert row[2:5] == ["60.0", "90.0", "+30.0"]
    assert int(row[7]) - int(row[6]) == 3  # 30 points of 10 problems: discordant counts differ by 3

    acc = section(md, "## Accuracy before and after")
    assert table_row(acc, "gsm8k")[1:4] == ["40.0 (10)", "90.0 (10)", "60.0 (10)"]


def test_full_report_analyses_case_study_and_kept_steps(full_run):
    records = synthetic_records()
    md = R.write_report(full_run, tokenizer=byte_tokenizer(), cases=2, kept_step_examples=3).read_text()

    # KL / entropy split by top-1 agreement, over steps t >= 1, recomputed here
    steps = [(r["kl"][t], r["top1_agree"][t]) for r in records for t in range(1, len(r["kl"]))]
    agree = [k for k, a in steps if a]
    row = table_row(md, "top-1 agree")
    assert row[1] == f"{len(agree):,}" and row[3] == f"{sum(agree) / len(agree):.3f}"
    assert table_row(md, "top-1 disagree")[1] == f"{len(steps) - len(agree):,}"

    # perplexity table, relative to base
    assert table_row(md, "final")[1:5] == ["20", "1.0000", f"{math.e:.3f}", f"{100 * (math.exp(-0.2) - 1):+.1f}%"]

    # case study: gsm8k ids 4..9 and math ids 4, 5 improved; gsm8k id 0 regressed
    case = section(md, "## Case study")
    assert "wrong and the tuned expert right: **8**" in case and "the reverse: **1**" in case
    assert "(first 2 of 8)" in case and "(first 1 of 1)" in case
    assert "**gsm8k #4**" in case and "**math #4**" in case  # round-robin over benchmarks
    assert "Qgsm8k4: what is 4 + 4?" in case  # the question, cut out of the ChatML prompt
    assert "x" * (R.COMPLETION_CHARS + 10) not in case  # completions are shortened

    # kept steps decoded with the given tokenizer, as inspect prints them
    kept = section(md, "## Kept steps")
    assert len(re.findall(r"\[p\d+ step \d+\] KL", kept)) == 3 and "expert :" in kept and "label  :" in kept
    kls = [float(x) for x in re.findall(r"\] KL ([0-9.]+)", kept)]
    all_kept = sorted(s["kl"] for r in records for s in r["steps"])
    assert kls[0] == pytest.approx(all_kept[-1], abs=1e-3) and kls[-1] == pytest.approx(all_kept[0], abs=1e-3)
    assert "Token ids shown" not in kept
    label = re.search(r"label  : (.*)", kept).group(1)
    assert re.fullmatch(r"('[a-z]' [01]\.\d{3}\s*)+", label)  # decoded to the letters the ids stand for


def test_figures_are_pngs_and_html_embeds_them(full_run):
    R.write_report(full_run)
    names = {"kl_histogram", "kept_rate_by_position", "plausible_set_size", "training_loss", "accuracy",
             "perplexity"}
    figs = {p.stem: p for p in (full_run / "report" / "figures").glob("*.png")}
    assert set(figs) == names
    import matplotlib.image as mpimg

    for p in figs.values():
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    md = (full_run / "report" / "report.md").read_text()
    for n in names:
        assert f"](figures/{n}.png)" in md
    page = (full_run / "report" / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(names)
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in figs.values()}
    assert "<table>" in page and 'src="figures/' not in page  # self-contained: no file references
    assert "<b>pooled</b>" in page  # markdown bold rendered in the HTML tables


def test_optional_stages_the_config_turns_off_are_not_this_runs(full_run):
    """An SFT baseline and a perplexity curve left by an earlier run of other settings stay out of the report."""
    L = RunLayout(full_run)
    assert R.RunData.load(full_run).sft_summary is not None and "sft" in R.RunData.load(full_run).evals
    config = yaml.safe_load(L.config.read_text())
    L.config.write_text(yaml.safe_dump({**config, "with_sft": False, "perplexity_problems": 0}))
    data = R.RunData.load(full_run)
    assert data.sft_summary is None and data.perplexity is None and set(data.evals) == {"base", "tuned"}
    md = R.write_report(full_run).read_text()
    assert "SFT" not in table_row(section(md, "## Accuracy before and after"), "benchmark")


def test_samples_only_folder_still_gets_a_report(tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    write_samples(run, synthetic_records(4, seed=3))
    md = R.write_report(run).read_text()
    assert "could not be built" not in md
    for note in ("No eval/base", "No train/summary.json", "No perplexity/perplexity.json", "Needs both eval/base",
                 "No train/meta.json"):
        assert note in md, note
    assert "## Sampling" in md and "top-1 agree" in md
    # efficiency row exists with what is known: problems, unknown time / tokens / gain
    row = table_row(md, "LightReasoner")
    assert row[4] == "4" and row[5] == "-" and row[6] == "-"
    # the manifest's expert cannot be loaded: ids instead of text, no crash
    assert "Token ids shown instead of text" in md and re.search(r"'<\d+>", md)
    assert {p.stem for p in (run / "report" / "figures").glob("*.png")} == {"kl_histogram", "kept_rate_by_position",
                                                                            "plausible_set_size"}
    assert (run / "report" / "report.html").read_text().count("data:image/png;base64,") == 3


def test_unfinished_training_and_empty_folder(tmp_path):
    run = tmp_path / "r"
    write_adapter(run, summary=False)
    md = R.write_report(run).read_text()
    assert "training has not finished" in md and (run / "report" / "figures" / "training_loss.png").exists()
    assert table_row(md, "LightReasoner")[5] == "320"  # kept steps seen so far, from the metrics
    empty = tmp_path / "empty"
    empty.mkdir()
    md = R.write_report(empty).read_text()
    assert "No samples, training records or SFT summary" in md and "could not be built" not in md
    with pytest.raises(R.InputError):
        R.write_report(tmp_path / "missing")


def test_cli_report_command(full_run, capsys):
    assert cli.main(["report", "--run-dir", str(full_run), "--cases", "1", "--kept-step-examples", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("report.md")
    md = (full_run / "report" / "report.md").read_text()
    assert "(first 1 of 8)" in md and len(re.findall(r"\[p\d+ step \d+\] KL", md)) == 2
    assert cli.main(["report", "--run-dir", str(full_run), "--cases", "-1"]) == 2


def test_kept_rate_by_position_counts_running_trajectories():
    recs = [{"kl": [0.0] * 4, "steps": [{"pos": 1}, {"pos": 3}]}, {"kl": [0.0] * 2, "steps": [{"pos": 1}]}]
    starts, rates, width = R.kept_rate_by_position(recs)
    assert width == 1 and starts == [0, 1, 2, 3] and rates == [0.0, 1.0, 0.0, 1.0]
    starts, rates, width = R.kept_rate_by_position(recs, max_bins=2)
    assert width == 2 and rates == [2 / 4, 1 / 2]


# ------------------------------------------------------------------------------------------------ perplexity


def direct_nll(model, tok, problems, system_prompt) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for p in problems:
            prompt = build_prompt_ids(tok, p.question, system_prompt)
            gold = tok(p.solution, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + gold])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
            total += float(F.cross_entropy(logits.float(), torch.tensor(gold), reduction="sum"))
            count += len(gold)
    return total, count


@pytest.fixture(scope="module")
def ppl_problems():
    return [Problem(str(i), r["question"], None, r["answer"].split("####")[0].strip())
            for i, r in enumerate(gsm8k_style_rows())]


def test_gold_perplexity_equals_direct_computation(ppl_problems):
    tok = byte_tokenizer()
    model = tiny_causal_lm(seed=3)
    total, count = direct_nll(model, tok, ppl_problems, "Be brief.")
    for bs in (1, 2, 8):  # padding and length sorting change nothing
        nll, ppl = R.gold_perplexity(model, tok, ppl_problems, "Be brief.", batch_size=bs)
        assert nll == pytest.approx(total / count, rel=1e-4) and ppl == pytest.approx(math.exp(nll))
    # problems without the target text are skipped; none at all is an input error
    with_missing = ppl_problems + [Problem("x", "no gold here")]
    assert R.gold_perplexity(model, tok, with_missing, "Be brief.")[0] == pytest.approx(total / count, rel=1e-4)
    with pytest.raises(R.InputError):
        R.gold_perplexity(model, tok, [Problem("x", "q")], "Be brief.")
    # the final-answer variant scores fewer, different tokens
    short = [Problem(p.id, p.question, r["answer"].split("####")[-1].strip(), p.solution)
             for p, r in zip(ppl_problems, gsm8k_style_rows())]
    assert R.gold_perplexity(model, tok, short, "Be brief.", target="answer")[0] != pytest.approx(total / count)
    assert not model.training


def test_gold_perplexity_is_lower_for_a_model_fitted_to_the_gold(ppl_problems):
    tok = byte_tokenizer()
    model = tiny_causal_lm(seed=4)
    fitted = copy.deepcopy(model).train()
    opt = torch.optim.Adam(fitted.parameters(), lr=1e-2)
    seqs = [(build_prompt_ids(tok, p.question, "Be brief."), tok(p.solution, add_special_tokens=False)["input_ids"])
            for p in ppl_problems]
    for _ in range(6):  # a few steps of NLL on the gold tokens: more mass on them
        opt.zero_grad()
        loss = sum(F.cross_entropy(fitted(input_ids=torch.tensor([pr + g])).logits[0, len(pr) - 1:-1],
                                   torch.tensor(g)) for pr, g in seqs)
        loss.backward()
        opt.step()
    _, ppl_before = R.gold_perplexity(model, tok, ppl_problems, "Be brief.")
    _, ppl_after = R.gold_perplexity(fitted, tok, ppl_problems, "Be brief.")
    assert ppl_after < 0.8 * ppl_before
    assert fitted.training  # the caller's mode is restored


def test_report_warns_when_models_were_evaluated_on_different_problems(full_run):
    assert "Not evaluated on the same problems" not in (R.write_report(full_run).read_text())
    tuned = RunLayout(full_run).eval("tuned") / "gsm8k.jsonl"
    rows = tuned.read_text().splitlines()
    tuned.write_text("\n".join(rows[:4]) + "\n")  # an unfinished evaluation
    md = R.write_report(full_run).read_text()
    assert "Not evaluated on the same problems" in md and "LightReasoner 4" in md
    assert f"base expert {len(rows)}" in md
    assert table_row(section(md, "### Paired test: LightReasoner vs base expert"), "gsm8k")[1] == "4"
