"""Adapters and merged models load with the usual one-liners and carry a real model card (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightreasoner import merge as mg
from lightreasoner import modelcard, models, stats
from lightreasoner import train as tr
from lightreasoner.config import resolve
from lightreasoner.embedded import DEFAULT_EXPERT, EMBEDDED

from test_train import cfg, make_records, write_jsonl

DATA_HASH = "shipped:gsm8k:sha256:" + "4" * 64
SAMPLES_FP = "sha256:" + "5" * 64


def sample_folder(tmp_path: Path, tokenizer, expert_dir: str) -> Path:
    """A samples file with the meta.json `lightreasoner sample` writes beside it (problems: the shipped GSM8K)."""
    folder = tmp_path / "sample"
    folder.mkdir()
    records = make_records(tokenizer)
    path = write_jsonl(folder / "samples.jsonl", records)
    meta = {"stage": "sample", "fingerprint": SAMPLES_FP, "samples": path.name, "complete": True,
            "identity": {"stage": "sample", "settings": {}, "inputs": {"data": DATA_HASH}},
            "config": {"data": "gsm8k", "max_problems": len(records), "alpha": 0.2, "beta": 0.4},
            "counts": {"problems": len(records), "steps": 144, "kept_steps": 30},
            "expert": {"spec": expert_dir, "fingerprint": models.fingerprint(models.resolve_source(expert_dir))},
            "amateur": {"spec": "qwen2.5-coder-0.5b-instruct"}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return path


def fake_eval(folder: Path, right: list[bool]) -> Path:
    """An evaluation folder: per-problem records and the summary `lightreasoner eval` writes."""
    folder.mkdir(parents=True)
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps({"id": str(i), "correct": r}) + "\n"
                                                for i, r in enumerate(right)))
    n, c = len(right), sum(right)
    summary = {"benchmarks": {"gsm8k": {"n": n, "correct": c, "accuracy": round(100 * c / n, 1),
                                        "accuracy_ci95": stats.accuracy_ci(c, n)}},
               "model": str(folder), "dtype": "float32"}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_adapter_loads_with_auto_peft_and_equals_the_merged_model(tmp_path, model_dirs, tokenizer):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    expert_dir = model_dirs[0]
    samples = sample_folder(tmp_path, tokenizer, expert_dir)
    out, merged_dir = tmp_path / "train", tmp_path / "merge"
    assert tr.main(cfg(tmp_path, samples=str(samples), expert=expert_dir, output=str(out))) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(expert_dir).resolve())  # a local base: its absolute path
    assert mg.merge_main(resolve(mg.MergeConfig, cli=dict(expert=expert_dir, adapter=str(out),
                                                          output=str(merged_dir)))) == 0

    tuned = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()  # offline (conftest: HF_HUB_OFFLINE=1)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    base = AutoModelForCausalLM.from_pretrained(expert_dir).eval()
    ids = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = (m(input_ids=ids).logits for m in (tuned, merged, base))
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - c).abs().max() > 1e-4  # the adapter was applied: not the base model's logits

    text = (out / modelcard.CARD).read_text()
    card = modelcard.read_front_matter(out / modelcard.CARD)
    assert card["base_model"] == config["base_model_name_or_path"] and card["library_name"] == "peft"
    assert {"lightreasoner", "lora"} <= set(card["tags"]) and card["datasets"] == ["openai/gsm8k"]
    assert "https://arxiv.org/abs/2510.07962" in text and "AutoPeftModelForCausalLM.from_pretrained(" in text
    for row in ("| lora_r | 8 |", "| lr | 0.01 |", "| steps_per_update | 6 |", "| lora_targets | q_proj, v_proj |"):
        assert row in text  # the stage's resolved settings
    assert DATA_HASH in text and SAMPLES_FP in text and "6 problems from `gsm8k`" in text
    assert "Not evaluated yet" in text

    mtext = (merged_dir / modelcard.CARD).read_text()
    mcard = modelcard.read_front_matter(merged_dir / modelcard.CARD)
    assert mcard["library_name"] == "transformers" and mcard["base_model"] == card["base_model"]
    assert "| merged_dtype | float32 |" in mtext and "| lora_r | 8 |" in mtext and DATA_HASH in mtext

    # Once evaluations exist, the card is rewritten with the measured accuracies and their intervals.
    base_eval = fake_eval(tmp_path / "eval" / "base", [i < 3 for i in range(10)])
    tuned_eval = fake_eval(tmp_path / "eval" / "tuned", [i < 7 for i in range(10)])
    assert modelcard.refresh(out, modelcard.eval_results(tuned_eval, base_eval)) == out / modelcard.CARD
    text = (out / modelcard.CARD).read_text()
    lo, hi = stats.accuracy_ci(7, 10)
    assert f"| tuned | gsm8k | 10 | 7 | 70.0 | {lo:.1f} .. {hi:.1f} |" in text and "Not evaluated yet" not in text
    d_lo, d_hi = stats.paired_change_ci(0, 4, 10)
    assert f"| gsm8k | 10 | +40.0 | {d_lo:+.1f} .. {d_hi:+.1f} |" in text
    assert modelcard.read_front_matter(out / modelcard.CARD) == card and "| lora_r | 8 |" in text


def test_an_embedded_base_is_named_by_its_hub_original_and_the_card_says_so(tmp_path):
    m = EMBEDDED[DEFAULT_EXPERT]
    base = {"spec": DEFAULT_EXPERT, "fingerprint": "sha256:" + m.sha256, "kind": "embedded",
            **models.source_facts(models.ModelSource(DEFAULT_EXPERT, "embedded", str(tmp_path)))}
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": DEFAULT_EXPERT}))
    assert modelcard.set_adapter_base(tmp_path, base) == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    modelcard.write(tmp_path, modelcard.Card("adapter", base, {"lora_r": 8}, {"samples": "s.jsonl"}))
    text = (tmp_path / modelcard.CARD).read_text()
    card = modelcard.read_front_matter(tmp_path / modelcard.CARD)
    assert card["base_model"] == "Qwen/Qwen2.5-Coder-1.5B-Instruct" and "datasets" not in card
    assert "embedded variant" in text and "Q4_K_M" in text and m.sha256 in text and m.package_spec in text
    assert "untied" in text and "none declared" in text and f"--model {DEFAULT_EXPERT}" in text

    hub = {"spec": "org/model", "kind": "hub", "fingerprint": "hub:org/model@abc123",
           **models.source_facts(models.ModelSource("org/model", "hub", "org/model"), "hub:org/model@abc123")}
    assert modelcard.set_adapter_base(tmp_path, hub) == "org/model"
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == "org/model" and written["revision"] == "abc123"


def test_a_card_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="card kind 'lora'"):
        modelcard.render(modelcard.Card("lora", {"spec": "x"}, {}))


@pytest.mark.filterwarnings("ignore:Could not find a config file")  # PEFT looks the short name up
def test_the_training_loop_names_an_embedded_base_by_its_hub_original(tmp_path, expert, tokenizer):
    """What `train` and `sft` share (training._save_model): an adapter trained on an embedded model names the hub
    original as its base, not the short embedded name PEFT would keep."""
    import copy

    from peft import LoraConfig, get_peft_model

    from lightreasoner import training

    lm = get_peft_model(copy.deepcopy(expert), LoraConfig(r=2, target_modules=["q_proj"]))
    lm.peft_config["default"].base_model_name_or_path = DEFAULT_EXPERT
    base = {"spec": DEFAULT_EXPERT, "fingerprint": "sha256:" + EMBEDDED[DEFAULT_EXPERT].sha256, "kind": "embedded",
            **models.source_facts(models.ModelSource(DEFAULT_EXPERT, "embedded", str(tmp_path)))}
    training._save_model(lm, lm.state_dict(), tokenizer, tmp_path / "adapter", base, full=False)
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == EMBEDDED[DEFAULT_EXPERT].about.hub_original
    assert written["base_model_name_or_path"] == "Qwen/Qwen2.5-Coder-1.5B-Instruct"


def sft_record(output: Path) -> dict:
    """What `lightreasoner sft` records in its meta.json (identity, config, counts), problems: the shipped GSM8K."""
    return {"stage": "sft", "identity": {"stage": "sft", "settings": {"samples_per_problem": 4, "temperature": 0.7,
                                                                      "lora_r": 8},
                                         "inputs": {"data": DATA_HASH, "expert": "sha256:" + "6" * 64}},
            "config": {"data": "gsm8k", "output": str(output), "samples_per_problem": 4},
            "counts": {"problems_sampled": 16, "problems_used": 5, "samples": 64, "correct_samples": 9,
                       "trajectories": 8, "tuned_tokens": 1234}}


def test_the_sft_adapter_card_describes_the_baseline_and_is_refreshed_with_results(tmp_path):
    m = EMBEDDED["smollm2-135m-instruct"]  # one GGUF in one package: "the package's" licence
    base = {"spec": m.name, "fingerprint": "sha256:" + m.sha256, "kind": "embedded",
            **models.source_facts(models.ModelSource(m.name, "embedded", str(tmp_path)))}
    out = tmp_path / "sft"
    (out / "adapter").mkdir(parents=True)
    (out / "meta.json").write_text(json.dumps({**sft_record(out), "expert": base}))
    assert modelcard.refresh(out) == out / "adapter" / modelcard.CARD
    text = (out / "adapter" / modelcard.CARD).read_text()
    card = modelcard.read_front_matter(out / "adapter" / modelcard.CARD)
    assert card["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and card["library_name"] == "peft"
    assert card["datasets"] == ["openai/gsm8k"] and "rejection-sampling-sft" in card["tags"]
    assert not {"contrastive-soft-labels", "lightreasoner"} & set(card["tags"])
    assert f"# Rejection-sampling SFT LoRA adapter for {card['base_model']}" in text
    assert "samples N completions per training problem" in text and "gold answer" in text
    assert "cross-entropy" in text and "https://arxiv.org/abs/2510.07962" in text
    assert "KL(p_E || p_A)" not in text and "training samples:" not in text  # nothing of LightReasoner's
    assert "| samples_per_problem | 4 |" in text and "| temperature | 0.7 |" in text
    assert f"16 problems from `gsm8k` (content hash `{DATA_HASH}`)" in text
    assert "kept solutions: 8 (right, finished, distinct) of 64 sampled (9 right), from 5 problems" in text
    assert "Licence: the package's Apache-2.0 (author Simon Willison)" in text and "chunk" not in text
    assert f"from_pretrained({str(out / 'adapter')!r})" in text and "lightreasoner run --with-sft" in text

    base_eval = fake_eval(tmp_path / "eval" / "base", [i < 2 for i in range(10)])
    sft_eval = fake_eval(tmp_path / "eval" / "sft", [i < 5 for i in range(10)])
    modelcard.refresh(out, modelcard.eval_results(sft_eval, base_eval))
    text = (out / "adapter" / modelcard.CARD).read_text()
    lo, hi = stats.accuracy_ci(5, 10)
    assert f"| tuned | gsm8k | 10 | 5 | 50.0 | {lo:.1f} .. {hi:.1f} |" in text and "Not evaluated yet" not in text
    assert "Paired change (tuned - base" in text and "Rejection-sampling SFT" in text


def test_a_card_of_an_unknown_method_is_refused_and_the_chunked_packages_are_plural(tmp_path):
    with pytest.raises(ValueError, match="card method 'rft'"):
        modelcard.render(modelcard.Card("adapter", {"spec": "x"}, {}, method="rft"))
    base = {"spec": DEFAULT_EXPERT, "kind": "embedded",
            **models.source_facts(models.ModelSource(DEFAULT_EXPERT, "embedded", str(tmp_path)))}
    text = modelcard.render(modelcard.Card("adapter", base, {}))
    assert "Licence: the packages' none declared" in text and "# LightReasoner LoRA adapter for" in text
