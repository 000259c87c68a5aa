"""Batch invariance: a prompt's logits, bit for bit, and so its completion, do not depend on what it is decoded
with (batch size, slot count, the other prompts, their order) or where a killed run resumed."""

import random

import pytest
import torch

from lightreasoner.decoder import hidden_states
from lightreasoner.invariant import invariant_linear
from lightreasoner.testing import decode_with_logits, invariance_runs, tiny_causal_lm

EOS = 256
# Wider than the default tiny shape, so products and attention take several blocks of their kernels.
SHAPE = dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2)


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def model(request):
    return tiny_causal_lm(seed=5, dtype=request.param, **SHAPE)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(32, 250) for _ in range(rng.randint(2, 90))] for _ in range(n)]


def _decode(model, prompts, order, **kw):
    return decode_with_logits(model, prompts, order, eos_ids=[EOS], pad_id=257, **kw)


def test_completions_do_not_depend_on_batch_size_order_or_resume(model):
    prompts = _prompts(8, seed=11)
    (ref, ref_logits), runs = invariance_runs(model, prompts, max_new_tokens=24, eos_ids=[EOS], pad_id=257)
    assert len({len(p) for p in prompts}) > 4 and len(ref_logits) > 8 * 5
    for done, logits in runs:
        assert done == ref
        assert logits.keys() == ref_logits.keys()
        assert all(logits[k] == ref_logits[k] for k in ref_logits)


def test_a_row_alone_equals_a_row_in_a_crowd(model):
    """One live row (another kernel for one-row products) and many rows give the same bits."""
    prompts = _prompts(5, seed=3)
    alone = [_decode(model, [p], [0], max_new_tokens=6)[1] for p in prompts]
    _, crowd = _decode(model, prompts, list(range(5)), max_new_tokens=6, batch_size=5)
    for i, a in enumerate(alone):
        assert all(crowd[i, t] == a[0, t] for t in range(6))


def test_teacher_forced_hidden_states_do_not_depend_on_the_other_sequences(model):
    seqs = _prompts(6, seed=4)
    together = hidden_states(model, seqs)
    for s, h in zip(seqs, together):
        assert torch.equal(hidden_states(model, [s])[0], h)
    assert torch.equal(hidden_states(model, seqs[::-1])[0], together[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_invariant_linear_rows(dtype):
    torch.manual_seed(0)
    w, b = torch.randn(300, 96).to(dtype), torch.randn(300).to(dtype)
    x = torch.randn(40, 96).to(dtype)
    one = invariant_linear(x[7:8], w, b)[0]
    for m in (2, 3, 5, 16, 17, 40):
        rows = torch.cat([x[:7], x[8:]])[:m - 1]
        got = invariant_linear(torch.cat([rows[:m // 2], x[7:8], rows[m // 2:]]), w, b)[m // 2]
        assert torch.equal(got, one)
    torch.testing.assert_close(invariant_linear(x, w, b).float(), torch.nn.functional.linear(x, w, b).float(),
                               rtol=2e-2, atol=2e-2)
