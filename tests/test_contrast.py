"""Properties of the method's math (contrast.py)."""

import pytest
import torch

from lightreasoner.contrast import (contrastive_label, dense_kl_loss, dense_label, expert_amateur_kl,
                                    plausible_mask, reduce_step, soft_label_kl_loss, top_k)


def _logits(seed, n=6, v=50, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale


def test_kl_nonnegative_and_zero_for_identical_models():
    le, la = _logits(0).log_softmax(-1), _logits(1).log_softmax(-1)
    assert (expert_amateur_kl(le, la) >= -1e-6).all()
    assert (expert_amateur_kl(le, la) > 0.01).all()
    assert torch.allclose(expert_amateur_kl(le, le), torch.zeros(6), atol=1e-6)


def test_plausible_set_is_alpha_times_max_and_contains_argmax():
    le = _logits(2).log_softmax(-1)
    p = le.exp()
    for alpha in (0.05, 0.2, 0.9):
        m = plausible_mask(le, alpha)
        thresh = alpha * p.max(-1, keepdim=True).values
        clear = (p - thresh).abs() > 1e-6  # away from the boundary, where rounding cannot decide
        assert torch.equal(m[clear], (p >= thresh)[clear])
        assert m[torch.arange(6), p.argmax(-1)].all()
    assert (plausible_mask(le, 0.05).sum(-1) >= plausible_mask(le, 0.9).sum(-1)).all()


def test_soft_label_sums_to_one_on_plausible_set_and_follows_contrast():
    le, la = _logits(3).log_softmax(-1), _logits(4).log_softmax(-1)
    m = plausible_mask(le, 0.2)
    w = contrastive_label(le, la, m)
    assert torch.allclose(w.sum(-1), torch.ones(6), atol=1e-6)
    assert (w[~m] == 0).all()
    # Within V_t the weights rank tokens by log pE - log pA.
    row = 0
    ids = m[row].nonzero().view(-1)
    if len(ids) >= 2:
        score = (le - la)[row, ids]
        assert torch.equal(w[row, ids].argsort(), score.argsort())
    # Without contrast: pE renormalised on V_t.
    w0 = contrastive_label(le, la, m, contrast=False)
    pe = le.exp() * m
    assert torch.allclose(w0, pe / pe.sum(-1, keepdim=True), atol=1e-6)


def test_reduce_step_sparse_label_matches_dense_and_tops():
    e, a = _logits(5), _logits(6)
    red = reduce_step(e, a, alpha=0.2)
    le, la = e.log_softmax(-1), a.log_softmax(-1)
    dense = contrastive_label(le, la, plausible_mask(le, 0.2))
    assert torch.allclose(dense_label(red.label_ids, red.label_weights, 50), dense, atol=1e-6)
    assert torch.allclose(red.kl, expert_amateur_kl(le, la))
    assert torch.equal(red.expert_top_ids[:, 0], e.argmax(-1))
    assert torch.equal(red.top1_agree, e.argmax(-1) == a.argmax(-1))
    # Padding is -1 with weight 0, and real ids come first in decreasing weight.
    for i in range(6):
        n = int((red.label_ids[i] >= 0).sum())
        assert (red.label_weights[i, n:] == 0).all()
        assert (red.label_weights[i, :n].diff() <= 1e-7).all()


def test_sparse_loss_equals_dense_loss_and_its_gradient():
    e, a = _logits(7), _logits(8)
    red = reduce_step(e, a, alpha=0.1)
    x1 = _logits(9).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    l1 = soft_label_kl_loss(x1, red.label_ids, red.label_weights)
    l2 = dense_kl_loss(x2, dense_label(red.label_ids, red.label_weights, 50))
    l1.backward(), l2.backward()
    assert torch.allclose(l1, l2, atol=1e-5)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert l1 > 0


def test_loss_is_zero_when_model_matches_label():
    w = torch.tensor([[0.7, 0.3]])
    ids = torch.tensor([[2, 5]])
    logits = torch.full((1, 8), -1e4)
    logits[0, 2], logits[0, 5] = torch.log(torch.tensor(0.7)), torch.log(torch.tensor(0.3))
    assert soft_label_kl_loss(logits, ids, w).abs() < 1e-5
    logits[0, 0] = 0.0  # moving mass to a token outside the label (e.g. a special token) raises the loss
    assert soft_label_kl_loss(logits, ids, w) > 0.1


@pytest.mark.slow
def test_compiled_statistics_equal_eager():
    from lightreasoner import contrast

    e, a = _logits(10, n=9, v=40000).bfloat16(), _logits(11, n=9, v=40000).bfloat16()
    fused = contrast.dense_stats(e, a)
    eager = contrast._dense_stats(e, a)
    assert contrast._compiled["fn"] is not contrast._dense_stats  # the compiled path really ran
    for x, y in zip(fused, eager):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ties", [3, 30])  # a tie group inside the spare rows, and one reaching past them
def test_top_k_orders_ties_by_index_whatever_the_rows_beside(ties):
    x = torch.randn(5, 400, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).float()
    x[2, torch.randperm(400, generator=torch.Generator().manual_seed(1))[:ties]] = 9.0  # equal maxima
    vals, ids = top_k(x, 6)
    ref_vals, ref_ids = x.sort(dim=-1, descending=True, stable=True)
    assert torch.equal(vals, ref_vals[:, :6]) and torch.equal(ids, ref_ids[:, :6])
    alone_vals, alone_ids = top_k(x[2:3], 6)
    assert torch.equal(alone_ids[0], ids[2]) and torch.equal(alone_vals[0], vals[2])
    tied = ids[2, :min(ties, 6)].tolist()
    assert vals[2, :len(tied)].eq(9.0).all() and tied == sorted(tied)  # the tied maxima first, by index
