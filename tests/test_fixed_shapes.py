"""The fixed-shape path that CUDA takes (``invariant.reduction_tile`` > 0), forced here on the CPU with a small tile:
it must compute what the native path computes, give a row the same bits whatever rides with it, and really run."""

import random

import pytest
import torch

from lightreasoner import crosstok, decoder, invariant, sampling
from lightreasoner.contrast import reduce_step, reduce_steps
from lightreasoner.invariant import RowInvariant, by_row_tiles, invariant_mean, rowwise
from lightreasoner.prompts import build_prompt_ids
from lightreasoner.testing import decode_with_logits, invariance_runs, steer, tiny_causal_lm, two_tokenizers
from lightreasoner.textpath import text_path

EOS = 256
SHAPE = dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2)
TILE = 3  # smaller than the batches below, so several tiles and a padded last one are exercised


@pytest.fixture
def fixed(monkeypatch):
    """Force the fixed-shape path on the CPU; counts the calls of the fixed decoding attention."""
    calls = {"attention": 0}
    real = decoder._decode_attention_fixed

    def counted(*args, **kwargs):
        calls["attention"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(invariant, "reduction_tile", lambda device: TILE)
    monkeypatch.setattr(decoder, "_decode_attention_fixed", counted)
    return calls


def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(32, 250) for _ in range(rng.randint(2, 90))] for _ in range(n)]


def _cache(b: int, hkv: int, width: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, hkv, width, d, generator=g), torch.randn(b, hkv, width, d, generator=g)


@pytest.mark.parametrize("window", [None, 20])
def test_fixed_decoding_attention_equals_the_native_one(monkeypatch, window):
    b, hq, hkv, d = 7, 4, 2, 16
    keys, values = _cache(b, hkv, 256, d, seed=1)
    q = torch.randn(b, hq, d, generator=torch.Generator().manual_seed(2))
    slots = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    lengths = torch.tensor([5, 130, 64, 1, 65, 199, 40])
    native = decoder._decode_attention(q, keys, values, slots, lengths, 0.3, window)
    monkeypatch.setattr(invariant, "reduction_tile", lambda device: TILE)
    fixed = decoder._decode_attention(q, keys, values, slots, lengths, 0.3, window)
    torch.testing.assert_close(fixed, native, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fixed, torch.zeros_like(fixed))


def test_fixed_decoding_attention_gives_a_row_the_same_bits_alone_and_in_a_crowd(fixed):
    hq, hkv, d = 4, 2, 16
    keys, values = _cache(6, hkv, 256, d, seed=3)
    q = torch.randn(6, hq, d, generator=torch.Generator().manual_seed(4))
    lengths = torch.tensor([9, 250, 70, 3, 128, 64])
    crowd = decoder._decode_attention(q, keys, values, torch.arange(6), lengths, None, None)
    for j in range(6):
        alone = decoder._decode_attention(q[j:j + 1], keys[j:j + 1], values[j:j + 1], torch.tensor([0]),
                                          lengths[j:j + 1], None, None)
        assert torch.equal(alone[0], crowd[j])
    assert fixed["attention"] == 7


def test_tiled_mean_equals_mean_and_leaves_other_reductions_alone(fixed, monkeypatch):
    seen = []
    real = invariant.invariant_mean
    monkeypatch.setattr(invariant, "invariant_mean", lambda *a, **k: seen.append(a[0].shape) or real(*a, **k))
    x = torch.randn(2, 7, 33)
    torch.testing.assert_close(invariant_mean(x, -1, keepdim=True), x.mean(-1, keepdim=True))
    assert invariant_mean(x, -1).shape == (2, 7)
    assert torch.equal(invariant_mean(x, 0), x.mean(0))
    assert torch.equal(invariant_mean(x), x.mean())
    with RowInvariant():  # RMSNorm's call, intercepted: tiles of TILE rows give a row the same bits
        rows = x.reshape(14, 33)
        alone = rows[5:6].pow(2).mean(-1, keepdim=True)
        crowd = rows.pow(2).mean(-1, keepdim=True)
    assert torch.equal(alone[0], crowd[5])
    assert seen == [(1, 33), (14, 33)]  # RowInvariant routed both calls through invariant_mean


def test_row_tiles_cover_every_row_once_padding_with_the_last(monkeypatch):
    x = torch.arange(8.0)[:, None]
    assert by_row_tiles(lambda t: t[:, 0].tolist(), x) == [(8, list(range(8)))]  # native: one call, unpadded
    monkeypatch.setattr(invariant, "reduction_tile", lambda device: TILE)
    assert by_row_tiles(lambda t: t[:, 0].tolist(), x) == [(3, [0, 1, 2]), (3, [3, 4, 5]), (2, [6, 7, 7])]


def test_rowwise_puts_tiles_back_together_as_one_call(monkeypatch):
    x, y = torch.randn(8, 5), torch.randn(8)
    fn = lambda a, b: (a.softmax(-1), a.sum(-1) + b)  # noqa: E731
    whole = fn(x, y)
    for tile in (0, TILE, 8, 20):  # native, several tiles and a padded last one, one exact tile, one padded tile
        got = rowwise(fn, x, y, tile=tile)
        assert [g.shape for g in got] == [w.shape for w in whole]
        for g, w in zip(got, whole):
            torch.testing.assert_close(g, w)
    assert rowwise(lambda a: a * 2, x[:1], tile=TILE).shape == (1, 5)


def test_tiled_reductions_stack_to_the_whole_one(fixed):
    g = torch.Generator().manual_seed(7)
    le, la = torch.randn(8, 300, generator=g) * 3, torch.randn(8, 300, generator=g) * 3
    le[5, :40] = le[5].max() + 0.1  # one row with a plausible set wider than the others
    whole, tiled = reduce_step(le, la, 0.2), reduce_steps(le, la, 0.2)
    assert tiled.label_ids.shape == whole.label_ids.shape and whole.label_ids.shape[1] >= 40
    for name in ("kl", "expert_entropy", "amateur_entropy", "label_weights", "expert_top_probs",
                 "amateur_top_probs"):
        torch.testing.assert_close(getattr(tiled, name), getattr(whole, name))
    for name in ("top1_agree", "label_ids", "expert_top_ids", "amateur_top_ids"):
        assert torch.equal(getattr(tiled, name), getattr(whole, name))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_the_fixed_path_decodes_invariantly_and_as_the_native_path(fixed, monkeypatch, dtype):
    model = tiny_causal_lm(seed=5, dtype=dtype, **SHAPE)
    prompts = _prompts(8, seed=11)
    (ref, ref_logits), runs = invariance_runs(model, prompts, max_new_tokens=12, eos_ids=[EOS], pad_id=257)
    for done, logits in runs:
        assert done == ref and logits.keys() == ref_logits.keys()
        assert all(logits[k] == ref_logits[k] for k in ref_logits)
    assert fixed["attention"] > 0
    monkeypatch.setattr(invariant, "reduction_tile", lambda device: 0)
    native, native_logits = decode_with_logits(model, prompts, list(range(8)), eos_ids=[EOS], pad_id=257,
                                               max_new_tokens=12, batch_size=8)
    # float32: every step agrees closely; bf16 rounds the attention's output, so a near-tie may flip a later token:
    # there the first decoded step (after one fixed-path attention) is compared
    steps = ref_logits if dtype == torch.float32 else [k for k in ref_logits if k[1] == 1]
    for k in steps:
        a, b = (torch.frombuffer(bytearray(x), dtype=torch.float32) for x in (ref_logits[k], native_logits[k]))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 if dtype == torch.float32 else 0.1)
    if dtype == torch.float32:
        assert native == ref


class ShapeSensitive(torch.overrides.TorchFunctionMode):
    """A stand-in for CUDA's kernels on the CPU: every product and reduction rounds by the shape of its whole call
    (its result scaled by 1 + 2^-18 * (a hash of the input shapes)), as a kernel choosing its split by shape does.
    Products whose inner size is 1 are exact anyway, and are left alone."""

    PRODUCTS = {torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm}
    REDUCTIONS = {torch.mean, torch.Tensor.mean, torch.sum, torch.Tensor.sum, torch.log_softmax,
                  torch.Tensor.log_softmax, torch.nn.functional.log_softmax, torch.softmax, torch.Tensor.softmax,
                  torch.nn.functional.softmax, torch.logsumexp, torch.Tensor.logsumexp, torch.Tensor.index_add_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.PRODUCTS and args[0].shape[-1] > 1 or func in self.REDUCTIONS and args[0].numel() > 1:
            shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
            out = out * (1 + 2.0 ** -18 * (hash(shapes) % 7))
        return out


@pytest.mark.parametrize("tile", [0, TILE], ids=["native", "fixed"])
def test_under_shape_sensitive_kernels_only_the_fixed_path_stays_invariant(monkeypatch, tile):
    """The routing test: with kernels that round by call shape, every product and reduction a decoded row meets
    must run in a shape of its own. The native path fails here (the emulation bites); the fixed path holds."""
    monkeypatch.setattr(invariant, "reduction_tile", lambda device: tile)
    model = tiny_causal_lm(seed=5, dtype=torch.float32, **SHAPE)  # float32: linear in fixed tiles on the CPU too
    prompts = _prompts(5, seed=3)
    with ShapeSensitive():
        alone = [decode_with_logits(model, [p], [0], eos_ids=[EOS], pad_id=257, max_new_tokens=4)[1] for p in prompts]
        _, crowd = decode_with_logits(model, prompts, list(range(5)), eos_ids=[EOS], pad_id=257, max_new_tokens=4,
                                      batch_size=5)
    same = all(crowd[i, t] == a[0, t] for i, a in enumerate(alone) for t in range(4))
    assert same == bool(tile)


def test_under_shape_sensitive_kernels_the_fixed_path_samples_the_same_at_any_batch_size(fixed):
    expert, amateur = (tiny_causal_lm(seed=s, dtype=torch.float32, **SHAPE) for s in (5, 6))
    prompts = _prompts(5, seed=8)
    params = sampling.ScoringParams(max_new_tokens=5, beta=0.0)

    def records(batch):
        with ShapeSensitive():
            trajs = [t for i in range(0, 5, batch)
                     for t in sampling.sample_batch(expert, amateur, prompts[i:i + batch], [EOS], 257, 256, params)]
        return [(t.completion, t.kl, t.steps) for t in trajs]

    together = records(5)
    assert sum(len(steps) for *_, steps in together) > 5  # steps were kept and labelled
    assert records(1) == together and records(2) == together


def test_the_pushforward_adds_in_a_fixed_order_only_where_tiles_are_used(monkeypatch):
    """CUDA's index_add_ adds with atomics unless torch's deterministic algorithms are on: the pushforward turns
    them on around its one scatter where reduction tiles are used (CUDA), and restores the setting."""
    seen = []
    real = torch.Tensor.index_add_
    monkeypatch.setattr(torch.Tensor, "index_add_", lambda *a, **k: seen.append(
        torch.are_deterministic_algorithms_enabled()) or real(*a, **k))
    logp = torch.log_softmax(torch.randn(4, 12), -1)
    first = torch.tensor([0, 1, 1, -1, 2, 0, 3, 3, 3, -1, 4, 5])
    native = crosstok.pushforward(logp, first, 6)
    monkeypatch.setattr(invariant, "reduction_tile", lambda device: TILE)
    fixed = crosstok.pushforward(logp, first, 6)
    assert seen == [False, True] and not torch.are_deterministic_algorithms_enabled()
    assert all(torch.equal(a, b) for a, b in zip(native, fixed))


def test_under_shape_sensitive_kernels_the_text_path_samples_the_same_at_any_batch_size(fixed):
    """An amateur with another tokenizer: its distribution over the expert's vocabulary (softmax, pushforward,
    marginalised paths) must not depend on the steps scored beside it either."""
    tok_e, tok_a = two_tokenizers()
    text = text_path(tok_e, tok_a, expert_rows=320, amateur_rows=320, expert_eos=[tok_e.eos_token_id],
                     amateur_eos=[tok_a.eos_token_id])
    # the expert writes tokens the amateur reads as one token or as two (marginalised)
    expert = steer(tiny_causal_lm(seed=5, dtype=torch.float32, **SHAPE),
                   tok_e.convert_tokens_to_ids(["Ġth", "Ġt", "12", "Ġ", "a", "1", "3", "h"]))
    amateur = tiny_causal_lm(seed=6, dtype=torch.float32, **SHAPE)
    questions = ["What is 3+4?", "Sara had 20 dollars.", "x", "A box holds 6 eggs.", "Add 12 and 23."]
    prompts = [build_prompt_ids(tok_e, q) for q in questions]
    a_prompts = [build_prompt_ids(tok_a, q) for q in questions]
    params = sampling.ScoringParams(max_new_tokens=6, beta=0.0, chunk_steps=4)

    def records(batch):
        with ShapeSensitive():
            trajs = [t for i in range(0, 5, batch)
                     for t in sampling.sample_batch(expert, amateur, prompts[i:i + batch], [EOS], 257, 320, params,
                                                    text=text, amateur_prompts=a_prompts[i:i + batch])]
        return [(t.completion, t.kl, t.alignment, t.dropped, t.steps) for t in trajs]

    together = records(5)
    codes = "".join(a for _, _, a, _, _ in together)
    assert "a" in codes and "m" in codes and sum(len(steps) for *_, steps in together) > 5
    assert records(1) == together and records(2) == together
