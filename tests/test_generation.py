"""The decoding seam: KV-cache splicing and continuous batching must not change what a prompt decodes to."""

import copy
import random
import time

import pytest
import torch

from lightreasoner.generation import CachedDecoder, generate, stream

EOS = 256


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(32, 250) for _ in range(rng.randint(3, 40))] for _ in range(n)]


def _alone(model, prompt, **kw):
    return generate(model, [prompt], eos_ids=[EOS], pad_id=257, **kw)[0]


@torch.inference_mode()
def test_admit_adds_rows_to_a_live_batch(expert):
    """Rows admitted mid-decode (shorter and longer than the live rows) and rows dropped in between: every row
    sees exactly its own context."""
    short, long_ = _prompts(2, seed=1)[0][:5], _prompts(1, seed=2)[0] + list(range(40, 70))
    dec = CachedDecoder(expert)
    dec.prefill([short, short[:3], [60, 61, 62]])
    dec.step(torch.tensor([40, 41, 42]))
    dec.keep([1, 0])  # the third row finished; the kept rows change order
    admitted = dec.admit([long_, [33, 34]])
    nxt = dec.step(torch.tensor([51, 50, 52, 53]))
    dec.close()
    contexts = [short[:3] + [41, 51], short + [40, 50], long_ + [52], [33, 34, 53]]
    for row, ctx in enumerate(contexts):
        ref = expert(input_ids=torch.tensor([ctx])).logits[0, -1]
        torch.testing.assert_close(nxt[row], ref, atol=1e-4, rtol=1e-4)
    for row, ctx in enumerate([long_, [33, 34]]):
        ref = expert(input_ids=torch.tensor([ctx])).logits[0, -1]
        torch.testing.assert_close(admitted[row], ref, atol=1e-4, rtol=1e-4)


def test_captured_hidden_states_are_the_ones_the_logits_come_from(expert):
    dec = CachedDecoder(expert, capture_hidden=True)
    logits = dec.prefill(_prompts(3, seed=4))
    assert dec.last_hidden is not None and dec.last_hidden.shape[0] == 3
    with torch.inference_mode():
        torch.testing.assert_close(expert.get_output_embeddings()(dec.last_hidden), logits)
        logits = dec.step(logits.argmax(-1))
        torch.testing.assert_close(expert.get_output_embeddings()(dec.last_hidden), logits)
    dec.keep([2])
    with torch.inference_mode():
        one = dec.step(logits[2:].argmax(-1))
    assert one.shape[0] == 1 and dec.last_hidden.shape[0] == 1
    dec.close()


@pytest.mark.parametrize("batch_size,refill", [(1, None), (3, 1), (4, 2), (16, None)])
def test_continuous_batching_decodes_like_one_at_a_time(expert, batch_size, refill):
    prompts = _prompts(9)
    seen_sizes = []
    got = {}
    for i, comp, secs in stream(expert, prompts, max_new_tokens=12, eos_ids=[EOS], pad_id=257,
                                batch_size=batch_size, refill=refill,
                                on_step=lambda v: seen_sizes.append(v.rows.numel())):
        assert i not in got and secs > 0
        got[i] = comp
    assert sorted(got) == list(range(len(prompts)))
    for i, p in enumerate(prompts):
        ref = _alone(expert, p, max_new_tokens=12)
        assert got[i].ids == ref.ids and got[i].finish_reason == ref.finish_reason
        assert 1 <= len(got[i].ids) <= 12
    assert max(seen_sizes) <= batch_size
    if refill == 1:  # a slot is refilled as soon as it frees: the batch is full while prompts wait
        full_until = len(seen_sizes) - 1 - seen_sizes[::-1].index(batch_size)
        assert all(s == batch_size for s in seen_sizes[:full_until + 1])
        assert len(seen_sizes) < sum(len(c.ids) for c in got.values())  # steps are shared between rows


def test_sampling_is_per_prompt_and_independent_of_batching(expert):
    prompts = _prompts(6, seed=3)
    kw = dict(max_new_tokens=10, eos_ids=[EOS], pad_id=257, temperature=1.0)
    a = generate(expert, prompts, batch_size=2, seed=[11, 12, 13, 14, 15, 16], **kw)
    b = generate(expert, prompts, batch_size=6, seed=[11, 12, 13, 14, 15, 16], **kw)
    c = generate(expert, prompts, batch_size=6, seed=[21, 22, 23, 24, 25, 26], **kw)
    assert [x.ids for x in a] == [x.ids for x in b]
    assert [x.ids for x in a] != [x.ids for x in c]
    assert generate(expert, prompts[2:3], seed=13, **kw)[0].ids == a[2].ids
    with pytest.raises(ValueError, match="2 seeds for 6 prompts"):
        generate(expert, prompts, seed=[1, 2], **kw)


def test_time_shares_add_up_to_the_wall_time(expert):
    prompts = _prompts(7, seed=4)
    t0 = time.perf_counter()
    shares = [s for _, _, s in stream(expert, prompts, max_new_tokens=8, eos_ids=[EOS], pad_id=257, batch_size=3)]
    wall = time.perf_counter() - t0
    assert len(shares) == 7 and all(s > 0 for s in shares)
    assert sum(shares) <= wall and sum(shares) > 0.5 * wall


def test_the_step_hook_sees_fed_tokens_and_hidden_states_across_admissions(expert):
    """With rows admitted mid-decode, ``fed`` is -1 for a row just prefilled and else the token it was just fed
    (its last generated one), and the captured hidden states are the ones the logits were computed from."""
    prompts = _prompts(7, seed=5)
    fed_seen: dict[int, list[int]] = {}
    mixed = []
    head = expert.get_output_embeddings()

    def hook(view):
        for r, f in zip(view.rows.tolist(), view.fed.tolist()):
            fed_seen.setdefault(r, []).append(f)
        mixed.append(bool((view.fed < 0).any()) and bool((view.fed >= 0).any()))
        with torch.inference_mode():
            torch.testing.assert_close(head(view.hidden), view.logits, atol=1e-4, rtol=1e-4)

    done = {i: c.ids for i, c, _ in stream(expert, prompts, max_new_tokens=6, eos_ids=[EOS], pad_id=257,
                                           batch_size=3, refill=1, on_step=hook, capture_hidden=True,
                                           stop=lambda ids: "x" if len(ids) == 2 + ids[0] % 4 else None)}
    assert sorted(done) == list(range(7)) and any(mixed)  # some steps had old and just-admitted rows together
    for r, ids in done.items():
        assert fed_seen[r] == [-1] + ids[:-1]


def test_prompts_in_their_order_decode_the_same(expert):
    prompts = _prompts(5, seed=6)
    kw = dict(max_new_tokens=8, eos_ids=[EOS], pad_id=257)
    first_rows = []
    given = {i: c.ids for i, c, _ in stream(expert, prompts, longest_first=False,
                                           on_step=lambda v: first_rows.append(v.rows.tolist()), **kw)}
    assert first_rows[0] == list(range(5))
    assert given == {i: c.ids for i, c, _ in stream(expert, prompts, **kw)}
