"""The batch-invariant decoder on the embedded amateurs' families: Llama (SmolLM2) and Gemma3 (Gemma-3-270M, whose
layers alternate sliding-window and full attention). What tests/test_invariance.py holds for Qwen2, held here on
tiny random models of each family: a prompt's logits, bit for bit, do not depend on the batch, the order or a
resume; and the decoder's logits are those of the model's own plain forward pass (the obvious computation)."""

import random

import pytest
import torch

from lightreasoner.decoder import CachedDecoder, hidden_states
from lightreasoner.testing import invariance_runs

EOS, PAD, VOCAB = 256, 257, 320
WINDOW = 16  # Gemma3's sliding window: shorter than most prompts below, so the window is exercised
COMMON = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
              head_dim=32, num_hidden_layers=3, max_position_embeddings=4096, bos_token_id=None, eos_token_id=EOS,
              pad_token_id=PAD, tie_word_embeddings=True)  # tied, as SmolLM2 and Gemma-3 are


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**COMMON))


def tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(**COMMON, sliding_window=WINDOW, query_pre_attn_scalar=32,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    return Gemma3ForCausalLM(cfg)


FAMILIES = {"llama": tiny_llama, "gemma3": tiny_gemma3}


def _build(family: str, dtype: torch.dtype):
    torch.manual_seed(5)
    model = FAMILIES[family]()
    with torch.no_grad():  # larger-than-default weights: peaked, diverse next-token distributions
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.to(dtype).eval()


@pytest.fixture(scope="module", params=[(f, d) for f in FAMILIES for d in (torch.float32, torch.bfloat16)],
                ids=lambda p: f"{p[0]}-{str(p[1]).split('.')[-1]}")
def model(request):
    return _build(*request.param)


@pytest.fixture(scope="module", params=list(FAMILIES))
def model32(request):
    return _build(request.param, torch.float32)


def _prompts(n: int, seed: int = 0, longest: int = 90) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(32, 250) for _ in range(rng.randint(2, longest))] for _ in range(n)]


def test_the_families_are_what_the_amateurs_are(model):
    cfg = model.config
    assert cfg.tie_word_embeddings and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if cfg.model_type == "gemma3_text":  # both kinds of layer are present, the window shorter than the prompts
        assert {"sliding_attention", "full_attention"} <= set(cfg.layer_types) and cfg.sliding_window == WINDOW


def test_completions_do_not_depend_on_batch_size_order_or_resume(model):
    prompts = _prompts(8, seed=11)
    (ref, ref_logits), runs = invariance_runs(model, prompts, max_new_tokens=16, eos_ids=[EOS], pad_id=PAD)
    assert len({len(p) for p in prompts}) > 4 and len(ref_logits) > 8 * 5
    assert sum(len(p) > WINDOW for p in prompts) >= 4  # most prompts outgrow the sliding window
    for done, logits in runs:
        assert done == ref
        assert logits.keys() == ref_logits.keys()
        assert all(logits[k] == ref_logits[k] for k in ref_logits)


def test_teacher_forced_hidden_states_do_not_depend_on_the_other_sequences(model):
    seqs = _prompts(6, seed=4)
    together = hidden_states(model, seqs)
    for s, h in zip(seqs, together):
        assert torch.equal(hidden_states(model, [s])[0], h)
    assert torch.equal(hidden_states(model, seqs[::-1])[0], together[-1])


@torch.inference_mode()
def test_decoder_logits_are_the_plain_forward_pass(model32):
    """Prefill, steps, rows dropped and admitted mid-decode, contexts past the sliding window: each row's logits
    are those of the model's own forward over that row's whole context (transformers' attention and masks)."""
    model = model32
    short, long_ = _prompts(1, seed=1, longest=3)[0] + list(range(60, 80)), _prompts(1, seed=2)[0] + list(range(40, 70))
    dec = CachedDecoder(model)
    first = dec.prefill([short, short[:3], [60, 61, 62]])
    for row, ctx in enumerate([short, short[:3], [60, 61, 62]]):
        torch.testing.assert_close(first[row], model(input_ids=torch.tensor([ctx])).logits[0, -1], atol=1e-4,
                                   rtol=1e-4)
    dec.step(torch.tensor([40, 41, 42]))
    dec.keep([1, 0])  # the third row finished; the kept rows change order
    admitted = dec.admit([long_, [33, 34]])
    contexts = [short[:3] + [41], short + [40], long_, [33, 34]]
    for t in range(WINDOW + 4):  # every row decodes past the window
        nxt = dec.step(torch.tensor([50 + t, 51 + t, 52 + t, 53 + t]))
        contexts = [c + [50 + t + j] for j, c in enumerate(contexts)]
    dec.close()
    assert min(len(c) for c in contexts) > WINDOW
    for row, ctx in enumerate(contexts):
        torch.testing.assert_close(nxt[row], model(input_ids=torch.tensor([ctx])).logits[0, -1], atol=1e-4,
                                   rtol=1e-4)
    for row, ctx in enumerate([long_, [33, 34]]):
        torch.testing.assert_close(admitted[row], model(input_ids=torch.tensor([ctx])).logits[0, -1], atol=1e-4,
                                   rtol=1e-4)
