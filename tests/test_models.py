"""Model loading helpers: specs, fingerprints, dtype choice, the KV-cache argument across transformers versions."""

from pathlib import Path

import pytest
import torch

from lightreasoner.generation import cache_kwarg, generate
from lightreasoner.models import ModelSpecError, fingerprint, load_model, resolve_dtype, resolve_source
from lightreasoner.testing import tiny_causal_lm

from conftest import save_tiny


def test_folder_fingerprint_tells_same_shape_checkpoints_apart(tmp_path, tokenizer):
    a = save_tiny(tmp_path / "a", tiny_causal_lm(seed=1), tokenizer)
    b = save_tiny(tmp_path / "b", tiny_causal_lm(seed=2), tokenizer)
    a2 = save_tiny(tmp_path / "a2", tiny_causal_lm(seed=1), tokenizer)
    fa, fb, fa2 = (fingerprint(resolve_source(p)) for p in (a, b, a2))
    assert fa == fa2 and fa != fb


@pytest.mark.parametrize("name, text", [("chat_template.jinja", "{{ messages[0]['content'] }}"),
                                        ("generation_config.json", '{"eos_token_id": [1, 2]}')])
def test_folder_fingerprint_follows_the_files_that_set_prompts_and_stops(tmp_path, tokenizer, name, text):
    folder = save_tiny(tmp_path / "m", tiny_causal_lm(seed=1), tokenizer)
    before = fingerprint(resolve_source(folder))
    (Path(folder) / name).write_text(text)
    assert fingerprint(resolve_source(folder)) != before


def test_gguf_fingerprint_reads_past_its_first_16_mib(tmp_path):
    from lightreasoner.models import ModelSource

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(40 << 20))
    src = ModelSource(str(f), "gguf", str(tmp_path), "m.gguf")
    before = fingerprint(src)
    with open(f, "r+b") as fh:  # a tensor deep in the file changes, the size and header do not
        fh.seek(30 << 20)
        fh.write(b"\x01" * (1 << 20))
    assert fingerprint(src) != before


def test_specs_are_classified_and_bad_paths_named(tmp_path, model_dirs):
    assert resolve_source(model_dirs[0]).kind == "folder"
    assert resolve_source("Qwen/Qwen2.5-0.5B").kind == "hub"
    with pytest.raises(ModelSpecError, match="nope.gguf"):
        resolve_source(str(tmp_path / "nope.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="config.json"):
        resolve_source(str(tmp_path / "empty"))
    m = load_model(model_dirs[0], dtype="float32", device="cpu")
    assert m.vocab_rows == 320 and m.describe()["fingerprint"].startswith("sha256:")


def test_dtype_choice():
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="--dtype"):
        resolve_dtype("float8", "cpu")


class _OldSignature(torch.nn.Module):
    """A model whose forward takes ``past_key_values`` (transformers < 5.24), as the GPU image had."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, logits_to_keep=logits_to_keep,
                          **{cache_kwarg(self.inner): past_key_values})


def test_kv_cache_reaches_models_of_either_signature(expert, tokenizer):
    prompts = [tokenizer("What is 3+4?").input_ids, tokenizer("x").input_ids]
    old = _OldSignature(expert)
    assert cache_kwarg(old) == "past_key_values"
    new = generate(expert, prompts, max_new_tokens=10, eos_ids=[256], pad_id=257)
    via_old = generate(old, prompts, max_new_tokens=10, eos_ids=[256], pad_id=257)
    assert [c.ids for c in new] == [c.ids for c in via_old]
    # Without a cache each step would see one token: the completions would differ from a full recomputation.
    with torch.no_grad():
        ids = prompts[0] + new[0].ids[:5]
        assert int(expert(torch.tensor([ids])).logits[0, -1].argmax()) == new[0].ids[5]
