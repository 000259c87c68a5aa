"""Shared fixtures: a byte-level tokenizer and tiny random Qwen2 models built in memory (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightreasoner.testing import byte_tokenizer, gsm8k_style_rows, tiny_causal_lm

torch.set_num_threads(2)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path_factory.getbasetemp() / "lr-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="session")
def expert():
    return tiny_causal_lm(seed=1)


@pytest.fixture(scope="session")
def amateur():
    return tiny_causal_lm(seed=2)


def save_tiny(path: Path, model, tokenizer) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, expert, amateur, tokenizer):
    """Folders holding the tiny expert and amateur (``save_pretrained`` layout), usable as model specs."""
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "expert", expert, tokenizer), save_tiny(root / "amateur", amateur, tokenizer)


@pytest.fixture
def gsm8k_file(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_style_rows()))
    return path
