"""`lightreasoner eval`: prompts, batched generation with stops, resumable output folders, adapters, --compare."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
import torch

from lightreasoner import cli, grading
from lightreasoner import benchmarks as B
from lightreasoner import evaluate as E
from lightreasoner import evaluation as EV
from lightreasoner import generation as G
from lightreasoner import prompts as P
from lightreasoner import stats as ST
from lightreasoner.config import ConfigError, resolve
from lightreasoner.testing import byte_tokenizer, gsm8k_style_rows
from lightreasoner.utils import InputError

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "bench"
FAST = {"max_new_tokens": 12, "batch_size": 4, "dtype": "float32", "device": "cpu"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A toolkit-layout folder with a 6-problem gsm8k (no idx field: positions become ids)."""
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    rows = gsm8k_style_rows() + [{"question": "What is 2 plus 2?", "answer": "2 + 2 = 4\n#### 4"}]
    (root / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run_eval(output: Path, model: str, data: Path, **kw) -> dict:
    cfg = resolve(E.EvalConfig, cli={"model": model, "output": str(output), "data_dir": str(data),
                                     "benchmarks": "gsm8k", **FAST, **kw})
    assert E.main(cfg) == 0
    return json.loads((output / "summary.json").read_text())


# ------------------------------------------------------------------------------------------------ statistics


def test_compare_runs_on_fabricated_folders(tmp_path, capsys):
    rng = random.Random(0)

    def write(run: Path, name: str, correct: list[bool], ids: list[str]) -> None:
        run.mkdir(exist_ok=True)
        (run / f"{name}.jsonl").write_text("".join(json.dumps({"id": i, "correct": c}) + "\n"
                                                   for i, c in zip(ids, correct)))

    a, b = tmp_path / "A", tmp_path / "B"
    # gsm8k: 30 pairs, A-only 8, B-only 3, both right 12, both wrong 7; B lists its ids in another order.
    pattern = [(1, 0)] * 8 + [(0, 1)] * 3 + [(1, 1)] * 12 + [(0, 0)] * 7
    rng.shuffle(pattern)
    ids = [str(i) for i in range(30)]
    write(a, "gsm8k", [bool(x) for x, _ in pattern], ids)
    order = list(range(30))
    rng.shuffle(order)
    write(b, "gsm8k", [bool(pattern[i][1]) for i in order], [ids[i] for i in order])
    # svamp: B has two extra problems that A lacks (unpaired), pairs 0-3: A-only 0, B-only 2.
    write(a, "svamp", [True, False, False, True], ["0", "1", "2", "3"])
    write(b, "svamp", [True, True, True, True, False, True], ["0", "1", "2", "3", "4", "5"])
    write(a, "math", [True], ["0"])  # only in A

    cmp = ST.compare_runs(a, b)
    g, s = cmp["benchmarks"]["gsm8k"], cmp["benchmarks"]["svamp"]
    assert (g["n"], g["a_only"], g["b_only"]) == (30, 8, 3)
    assert g["acc_a"] == round(100 * 20 / 30, 1) and g["acc_b"] == round(100 * 15 / 30, 1)
    assert g["p_value"] == ST.mcnemar_exact(8, 3)
    assert g["min_detectable_80"] == ST.min_detectable_difference(30, 11 / 30) and g["min_detectable_80"] > 0
    assert (s["n"], s["a_only"], s["b_only"], s["unpaired_b"]) == (4, 0, 2, 2)
    assert cmp["all"]["a_only"] == 8 and cmp["all"]["b_only"] == 5
    assert cmp["all"]["p_value"] == ST.mcnemar_exact(8, 5)
    assert cmp["only_in_a"] == ["math"] and cmp["only_in_b"] == []
    assert cmp["average"]["acc_a"] == round(statistics.fmean([100 * 20 / 30, 100 * 2 / 4]), 1)  # unrounded
    assert cmp["average"]["delta"] == round(statistics.fmean([100 * -5 / 30, 100 * 2 / 4]), 1)
    al = cmp["all"]  # the pooled problems' own accuracies and change, as its interval and p-value
    assert (al["n"], al["a_right"], al["b_right"]) == (34, 22, 19) and al["delta"] == round(-300 / 34, 1)
    assert al["delta_ci95"] == ST.paired_change_ci(8, 5, 34)

    out = tmp_path / "cmp"
    assert cli.main(["eval", "--compare", f"{a},{b}", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| gsm8k | 30 |" in printed and "McNemar" in printed and "80% power" in printed
    assert json.loads((out / "compare.json").read_text())["benchmarks"]["gsm8k"]["a_only"] == 8


# ------------------------------------------------------------------------------------------------ pieces


def test_batch_slots_respects_the_kv_budget():
    rng = random.Random(1)
    lengths = [rng.randint(1, 300) for _ in range(57)]
    for bs, budget in ((1, None), (8, None), (16, 2000), (16, 50)):
        slots = G.batch_slots(lengths, batch_size=bs, max_new_tokens=64, max_batch_tokens=budget)
        assert 1 <= slots <= bs
        if budget is not None and slots > 1:
            assert slots * (max(lengths) + 64) <= budget
    assert G.batch_slots(lengths, batch_size=16, max_new_tokens=64, max_batch_tokens=2000) == 2000 // (max(lengths) + 64)


def test_stop_checker_and_postprocess(tokenizer):
    stop = G.StopChecker(tokenizer)
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert stop(enc("so the answer is 4 </s")) is None
    assert stop(enc("so the answer is 4 </s>")) == "</s>"
    spelled = enc("x" * 100) + [i for ch in "<|im_end|>" for i in enc(ch)]  # byte by byte, not the special id
    assert len(spelled) == 110 and stop(spelled) == "<|im_end|>" and stop(spelled[:-1]) is None
    assert stop(enc("a > b")) is None
    assert stop([]) is None
    assert G.postprocess_completion("  The answer is 4. <|endoftext|> junk </s> ") == "The answer is 4."
    assert G.postprocess_completion("\n x \n") == "x"
    text = "a </s> b <|im_end|>"
    assert G.postprocess_completion(G.postprocess_completion(text)) == G.postprocess_completion(text) == "a"
    ids = P.eos_ids(tokenizer, stop_strings=P.STOP_STRINGS)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids and tokenizer.convert_tokens_to_ids(
        "<|endoftext|>") in ids


def _gsm8k_prompt_ids(tokenizer) -> list[list[int]]:
    texts = [B.build_prompt("gsm8k", r, tokenizer) for r in gsm8k_style_rows()]
    return P.encode_prompts(tokenizer, texts)


def test_batched_generation_equals_one_at_a_time(expert, tokenizer):
    prompts = _gsm8k_prompt_ids(tokenizer)
    prompts.append(prompts[0][:40])  # a much shorter prompt forces real left padding
    batched = G.generate_texts(expert, tokenizer, prompts, max_new_tokens=24, batch_size=8)
    single = G.generate_texts(expert, tokenizer, prompts, max_new_tokens=24, batch_size=1)
    assert [o.ids for o in batched] == [o.ids for o in single]
    assert [o.text for o in batched] == [o.text for o in single]
    assert [o.finish_reason for o in batched] == [o.finish_reason for o in single]
    assert all(1 <= o.new_tokens <= 24 for o in batched)
    eos = set(P.eos_ids(tokenizer, expert, P.STOP_STRINGS))
    for o in batched:
        assert (o.finish_reason == "eos") == (o.ids[-1] in eos)
        assert o.finish_reason == "eos" or o.new_tokens == 24


def test_generation_stops_at_stop_strings(expert, tokenizer):
    prompts = _gsm8k_prompt_ids(tokenizer)
    free = G.generate_texts(expert, tokenizer, prompts, max_new_tokens=30, batch_size=8, stop_strings=())
    target = next(o for o in free if len(o.text) > 8)
    i = free.index(target)
    needle = target.text[4:6]  # a string the model writes: it must stop there now
    cut = G.generate_texts(expert, tokenizer, prompts, max_new_tokens=30, batch_size=8,
                           stop_strings=(needle,), eos_ids=P.eos_ids(tokenizer, expert, P.STOP_STRINGS))
    assert cut[i].finish_reason == "stop"
    assert cut[i].new_tokens < free[i].new_tokens
    assert needle not in cut[i].text and target.text.startswith(cut[i].text)
    assert cut[i].ids == free[i].ids[:cut[i].new_tokens]


def test_build_prompt_forms(tokenizer):
    row = gsm8k_style_rows()[0]
    q = grading.parse_question("gsm8k", dict(row))
    assert B.build_prompt("gsm8k", row, tokenizer) == grading.build_qwen25_math_prompt(q)
    assert B.build_prompt("gsm8k", row, tokenizer, shots=5) == grading.build_qwen25_math_prompt(q)  # mmlu only
    chat = B.build_prompt("gsm8k", row, tokenizer, "chat")
    assert P.BOXED_SYSTEM_PROMPT in chat and q in chat and chat.endswith("assistant\n")
    mmlu = {"question": "Which is a prime?", "choices": ["4", "6", "7", "9"], "answer": 2}
    demos = grading.FEW_SHOT["mmlu_stem"][:3]
    shot = B.build_prompt("mmlu_stem", mmlu, tokenizer, shots=3)
    mq = grading.parse_question("mmlu_stem", dict(mmlu))
    assert shot == grading.build_qwen25_math_prompt(mq, demos)
    assert all(d[0] in shot for d in demos) and grading.FEW_SHOT["mmlu_stem"][3][0] not in shot.split(demos[-1][0])[0]
    assert P.few_shot_input(mq, demos) in B.build_prompt("mmlu_stem", mmlu, tokenizer, "chat", 3)
    assert mmlu["choices"] == ["4", "6", "7", "9"]  # never mutated
    with pytest.raises(ConfigError, match="chat template"):
        B.build_prompt("gsm8k", row, byte_tokenizer(with_chat_template=False), "chat")


def test_config_and_data_errors(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="--model is required"):
        resolve(E.EvalConfig, cli={"output": str(tmp_path)})
    with pytest.raises(ConfigError, match="--compare takes two"):
        resolve(E.EvalConfig, cli={"compare": "a,b,c"})
    with pytest.raises(ConfigError, match="--shots"):
        resolve(E.EvalConfig, cli={"model": "m", "output": "o", "shots": 99})
    with pytest.raises(ConfigError, match="not one of"):
        resolve(E.EvalConfig, cli={"model": "m", "output": "o", "benchmarks": "gsm8k,gsm9k"})
    assert resolve(E.EvalConfig, cli={"compare": "a,b"}).compare == ("a", "b")
    with pytest.raises(InputError, match="toolkit's layout"):
        B.load_benchmark("svamp", data_dir)
    shipped = B.load_benchmark("svamp", None)  # the copy shipped with the package
    assert len(shipped) == 1000 and B.load_benchmark("svamp", None, limit=2) == shipped[:2]
    rows = B.load_benchmark("gsm8k", data_dir, limit=3)
    assert [r["idx"] for r in rows] == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.skipif(not BENCH.is_dir(), reason="shared benchmark data absent")
def test_eval_end_to_end_all_benchmarks(tmp_path, model_dirs, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--model", model_dirs[0], "--data-dir", str(BENCH), "--output", str(out), "--limit", "2",
            "--benchmarks", ",".join(B.PAPER_BENCHMARKS)] + [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    assert cli.main(argv) == 0
    assert "average" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["limit"] == 2 and config["identity"]["model_fingerprint"].startswith("sha256:")
    assert "torch" in config["environment"] and config["model"]["parameters"] > 0
    assert summary["order"] == list(B.PAPER_BENCHMARKS)
    accs = []
    for b in B.PAPER_BENCHMARKS:
        s = summary["benchmarks"][b]
        recs = read_jsonl(out / f"{b}.jsonl")
        examples = B.load_benchmark(b, BENCH, 2)
        assert [r["id"] for r in recs] == [str(ex["idx"]) for ex in examples]
        assert s["n"] == len(recs) == 2 and s["correct"] == sum(r["correct"] for r in recs)
        assert s["accuracy"] == round(100 * statistics.fmean(r["correct"] for r in recs), 1)
        assert s["truncated"] == sum(r["finish_reason"] == "length" for r in recs)
        assert s["new_tokens"] == sum(r["new_tokens"] for r in recs)
        for r, ex in zip(recs, examples):
            assert 1 <= r["new_tokens"] <= FAST["max_new_tokens"]
            assert r["prompt"] == B.build_prompt(b, ex, None)
            g = grading.grade(b, dict(ex), r["completion"])
            assert (g.pred, g.gold, g.correct) == (r["pred"], r["gold"], r["correct"])
        accs.append(s["accuracy"])
    assert summary["average"] == round(statistics.fmean(accs), 1)
    assert summary["totals"]["n"] == 14
    assert all(summary["benchmarks"][b]["accuracy_ci95"] == list(ST.accuracy_ci(summary["benchmarks"][b]["correct"], 2))
               for b in B.PAPER_BENCHMARKS)
    md = (out / "summary.md").read_text()
    assert all(f"| {b} | 2 |" in md for b in B.PAPER_BENCHMARKS)


def test_resume_matches_uninterrupted_run(tmp_path, model_dirs, data_dir):
    full = tmp_path / "full"
    run_eval(full, model_dirs[0], data_dir)
    reference = read_jsonl(full / "gsm8k.jsonl")
    assert len(reference) == 6

    # a run stopped after 2 problems, then continued with the whole set
    staged = tmp_path / "staged"
    run_eval(staged, model_dirs[0], data_dir, limit=2)
    first = read_jsonl(staged / "gsm8k.jsonl")
    with pytest.raises(InputError, match=r"settings.limit: 2 -> None.*--rerun"):
        run_eval(staged, model_dirs[0], data_dir)  # another selection is never taken for the finished one
    summary = run_eval(staged, model_dirs[0], data_dir, rerun=True)
    resumed = read_jsonl(staged / "gsm8k.jsonl")
    assert without_timing(resumed) == without_timing(reference)
    assert resumed[:2] == first  # kept, not generated again (timings identical)
    assert summary["benchmarks"]["gsm8k"]["n"] == 6

    # a kill mid-write (before meta.json): two whole records and a torn third line
    lines = (full / "gsm8k.jsonl").read_text().splitlines(keepends=True)
    (full / "gsm8k.jsonl").write_text("".join(lines[3:5]) + lines[5][:20])
    (full / "meta.json").rename(full / ".started.json")
    run_eval(full, model_dirs[0], data_dir)
    assert without_timing(read_jsonl(full / "gsm8k.jsonl")) == without_timing(reference)


def test_interrupted_larger_selection_does_not_look_finished(tmp_path, model_dirs, data_dir, monkeypatch):
    from lightreasoner.layout import stage_state

    out = tmp_path / "run"
    run_eval(out, model_dirs[0], data_dir, limit=2)
    cfg = resolve(E.EvalConfig, cli={"model": model_dirs[0], "output": str(out), "data_dir": str(data_dir),
                                     "benchmarks": "gsm8k", "rerun": True, **FAST})
    assert stage_state(out, E.identity(cfg)).status == "changed"  # the limit grew

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "evaluate_model", killed)
    with pytest.raises(KeyboardInterrupt):
        E.main(cfg)
    # the summary of the 2-problem evaluation is gone (its records stay), so a rerun evaluates again
    assert not (out / "summary.json").exists() and len(read_jsonl(out / "gsm8k.jsonl")) == 2
    assert stage_state(out, E.identity(cfg)).status == "partial"
    monkeypatch.undo()
    assert E.main(cfg) == 0 and stage_state(out, E.identity(cfg)).status == "done"
    assert json.loads((out / "summary.json").read_text())["benchmarks"]["gsm8k"]["n"] == 6


def test_resume_refuses_other_settings(tmp_path, model_dirs, data_dir):
    out = tmp_path / "run"
    run_eval(out, model_dirs[0], data_dir, limit=2)
    with pytest.raises(InputError, match=r"settings.max_new_tokens: 12 -> 5.*--rerun"):
        run_eval(out, model_dirs[0], data_dir, limit=2, max_new_tokens=5)
    with pytest.raises(InputError, match=r"inputs.model: 'sha256:\w+' -> 'sha256:\w+'"):
        run_eval(out, model_dirs[1], data_dir, limit=2)
    summary = run_eval(out, model_dirs[0], data_dir, limit=2, max_new_tokens=5, rerun=True)
    assert all(r["new_tokens"] <= 5 for r in read_jsonl(out / "gsm8k.jsonl"))
    assert summary["max_new_tokens"] == 5
    summary = run_eval(out, model_dirs[0], data_dir, limit=2, overwrite=True)  # --overwrite: the same, records too
    assert summary["max_new_tokens"] == 12


def test_adapter_eval_matches_merged_model(tmp_path, model_dirs, data_dir, tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32)
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    merged_dir = tmp_path / "merged"
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.float32),
                                       str(adapter)).merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)

    kw = {"max_new_tokens": 16}
    plain = run_eval(tmp_path / "plain", model_dirs[0], data_dir, **kw)
    with_adapter = run_eval(tmp_path / "lora", model_dirs[0], data_dir, adapter=str(adapter), **kw)
    run_eval(tmp_path / "merged_run", str(merged_dir), data_dir, **kw)
    texts = {name: [r["completion"] for r in read_jsonl(tmp_path / name / "gsm8k.jsonl")]
             for name in ("plain", "lora", "merged_run")}
    assert texts["lora"] != texts["plain"]
    assert texts["lora"] == texts["merged_run"]
    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert config["identity"]["adapter_fingerprint"].startswith("sha256:") and with_adapter["adapter"]
    assert plain["adapter"] is None


def test_bf16_adapter_eval_matches_the_merge_stage(tmp_path, model_dirs, data_dir, tokenizer):
    """A bf16 expert + adapter evaluates exactly like the bf16 checkpoint `lightreasoner merge` writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lightreasoner.adapters import merge_adapter

    base_dir = tmp_path / "base16"
    AutoModelForCausalLM.from_pretrained(model_dirs[0], dtype=torch.bfloat16).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    torch.manual_seed(1)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.model.norm.weight.requires_grad_(False)  # a flag the fold must keep, like every other
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    merged = merge_adapter(base, tmp_path / "adapter")
    assert {n: p.requires_grad for n, p in merged.named_parameters()} == flags  # PEFT froze them all
    merged.to(torch.bfloat16).save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")

    kw = {"max_new_tokens": 16, "dtype": "bfloat16"}
    run_eval(tmp_path / "plain", str(base_dir), data_dir, **kw)
    run_eval(tmp_path / "lora", str(base_dir), data_dir, adapter=str(tmp_path / "adapter"), **kw)
    run_eval(tmp_path / "merged_run", str(tmp_path / "merged"), data_dir, **kw)
    texts = {name: [r["completion"] for r in read_jsonl(tmp_path / name / "gsm8k.jsonl")]
             for name in ("plain", "lora", "merged_run")}
    assert texts["lora"] != texts["plain"]
    assert texts["lora"] == texts["merged_run"]
    assert json.loads((tmp_path / "lora" / "config.json").read_text())["identity"]["dtype"] == "bfloat16"


def test_evaluate_model_scores_known_completions(tmp_path, monkeypatch, tokenizer, data_dir):
    """Half the completions box the gold answer: accuracy, records and resume follow the grader's verdicts."""
    examples = B.load_benchmark("gsm8k", data_dir)
    answers = {}
    for k, ex in enumerate(examples):
        gold = ex["answer"].split("####")[-1].strip()
        text = f"So the total is \\boxed{{{gold}}}." if k % 2 == 0 else f"It is {int(gold) + 1} </s> ignored"
        prompt = P.encode_prompts(tokenizer, [B.build_prompt("gsm8k", ex, tokenizer)])[0]
        answers[tuple(prompt)] = text

    calls = []

    def fake_iter_generate(model, tok, prompts, **kw):
        calls.append(len(prompts))
        for i, p in enumerate(prompts):
            text = answers[tuple(p)]
            yield [i], [G.GenOutput(G.postprocess_completion(text), [1] * 7, "stop", 0.5)], 0.5

    monkeypatch.setattr(EV, "iter_generate", fake_iter_generate)
    cfg = E.EvalConfig(model="fake", output=str(tmp_path), max_new_tokens=8)
    out = tmp_path / "gsm8k.jsonl"
    first = E.evaluate_model(None, tokenizer, "gsm8k", examples[:3], cfg, out, progress=False)
    assert [r["correct"] for r in first["records"]] == [True, False, True]
    s = E.evaluate_model(None, tokenizer, "gsm8k", examples, cfg, out, progress=False)
    assert calls == [3, 3]  # the resumed call generated only the three new problems
    assert [r["correct"] for r in s["records"]] == [True, False] * 3
    assert s["n"] == 6 and s["correct"] == 3 and s["accuracy"] == 50.0
    assert s["records"][1]["completion"] == f"It is {int(s['records'][1]['gold']) + 1}"  # cut at the stop string
    assert s["records"][0]["pred"] == s["records"][0]["gold"] == "7"
    assert s["new_tokens"] == 42 and s["generation_seconds"] == 3.0 and s["tokens_per_second"] == 14.0
    assert [r["id"] for r in read_jsonl(out)] == [str(i) for i in range(6)]
    memory_only = E.evaluate_model(None, tokenizer, "gsm8k", examples, cfg, None, progress=False)
    assert without_timing(memory_only["records"]) == without_timing(s["records"])
    # A smaller selection keeps the other finished records aside; a larger one takes them back, generating nothing.
    small = E.evaluate_model(None, tokenizer, "gsm8k", examples[:2], cfg, out, progress=False)
    assert small["n"] == 2 and [r["id"] for r in read_jsonl(out)] == ["0", "1"]
    assert sorted(r["id"] for r in read_jsonl(EV.extra_path(out))) == ["2", "3", "4", "5"]
    again = E.evaluate_model(None, tokenizer, "gsm8k", examples, cfg, out, progress=False)
    assert calls == [3, 3, 6] and again["records"] == s["records"] and not EV.extra_path(out).exists()


def test_revision_and_remote_code_reach_the_loader(tmp_path, model_dirs, data_dir, monkeypatch):
    from lightreasoner import models

    with pytest.raises(ConfigError, match=r"--revision 'main': .* is a local folder"):
        resolve(E.EvalConfig, cli={"model": model_dirs[0], "output": str(tmp_path / "o"), "revision": "main"})
    seen: dict = {}
    real = models.load_model

    def spy(spec, **kw):
        seen.update(kw)
        return real(spec, **kw)

    monkeypatch.setattr(models, "load_model", spy)
    run_eval(tmp_path / "run", model_dirs[0], data_dir, limit=1, trust_remote_code=True)
    assert seen["trust_remote_code"] is True and seen["revision"] is None
