"""The text path (an amateur with another tokenizer): against the id path when the tokenizers coincide, and against
the slow obvious computation (one amateur forward per prefix, explicit loops) when they differ."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from lightreasoner import crosstok as X
from lightreasoner import sample as S
from lightreasoner import sampling as SA
from lightreasoner.cli import main as cli_main
from lightreasoner.contrast import reduce_step
from lightreasoner.decoder import hidden_states
from lightreasoner.prompts import build_prompt_ids
from lightreasoner.testing import byte_tokenizer, tiny_causal_lm
from lightreasoner.textpath import score_text, text_path
from lightreasoner.utils import read_complete_jsonl

QUESTIONS = ["What is 3+4?", "A box holds 6 eggs. How many eggs are in 5 boxes?", "x", "Sara had 20 dollars."]
ROWS = 320  # output rows of the tiny models


def bpe_tokenizer(merges: list[tuple[str, str]], chat: bool = True):
    """The byte tokenizer of :mod:`lightreasoner.testing` with BPE ``merges`` (byte-level characters), the merged
    tokens after the 256 bytes and the special tokens after them (so ids differ between merge lists)."""
    return byte_tokenizer(with_chat_template=chat, merges=merges)


# The expert merges " the", "12" and "é"; the amateur "the", " a", "23" and "ü", and has no chat template.
EXPERT_MERGES = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("1", "2"), ("Ã", "©")]
AMATEUR_MERGES = [("t", "h"), ("th", "e"), ("Ġ", "a"), ("2", "3"), ("Ã", "¼")]


@pytest.fixture(scope="module")
def pair():
    return bpe_tokenizer(EXPERT_MERGES), bpe_tokenizer(AMATEUR_MERGES, chat=False)


def _text(tok_e, tok_a, amateur):
    return text_path(tok_e, tok_a, expert_rows=ROWS, amateur_rows=ROWS, expert_eos=[tok_e.eos_token_id],
                     amateur_eos=[tok_a.eos_token_id])


def _same(a: list[SA._Trajectory], b: list[SA._Trajectory]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.completion == y.completion
        assert (x.kl, x.ent_e, x.ent_a, x.agree) == (y.kl, y.ent_e, y.ent_a, y.agree)
        assert x.steps == y.steps  # positions, token_ids, weights, tops: bit for bit (rounded the same)


# ---------------------------------------------------------------------------------------------------------------
# (a) one tokenizer, forced through the text path == the id path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("merged", [False, True])
def test_text_path_with_one_tokenizer_equals_the_id_path(dtype, merged):
    tok = bpe_tokenizer(EXPERT_MERGES) if merged else byte_tokenizer()
    expert, amateur = tiny_causal_lm(seed=1, dtype=dtype), tiny_causal_lm(seed=2, dtype=dtype)
    prompts = [build_prompt_ids(tok, q) for q in QUESTIONS]
    eos = [tok.eos_token_id]
    params = SA.ScoringParams(max_new_tokens=14, beta=0.5, chunk_steps=16)
    ids = SA.sample_batch(expert, amateur, prompts, eos, tok.pad_token_id, ROWS, params)
    text = _text(tok, tok, amateur)
    assert text.vmap.fast and text.vmap.unmapped == 0
    via_text = SA.sample_batch(expert, amateur, prompts, eos, tok.pad_token_id, ROWS, params, text=text)
    _same(ids, via_text)
    assert sum(len(t.steps) for t in ids) > 0
    assert all(t.alignment == "a" * len(t.completion) and t.dropped == 0.0 for t in via_text)
    # the completions hold unfinished characters (random bytes): the fast path scores them too
    assert any(tok.decode(t.completion[:k]).endswith("\ufffd") for t in ids for k in range(1, len(t.completion)))


def test_permuted_ids_of_one_tokenizer_take_the_fast_path(pair):
    tok_e, _ = pair
    vocab = tok_e.get_vocab()
    order = sorted(vocab, key=lambda s: (len(s), s), reverse=True)  # the same tokens, other ids
    perm = {s: i for i, s in enumerate(order)}
    vmap = X.build_vocab_map(tok_e, _Renumbered(tok_e, perm), expert_rows=ROWS, amateur_rows=ROWS, amateur_eos=[])
    assert vmap.fast and vmap.twins == len(vocab)
    assert all(int(vmap.gather[vocab[s]]) == perm[s] for s in vocab)


class _Renumbered:
    """A tokenizer with the same tokens under other ids (only what build_vocab_map reads)."""

    def __init__(self, tok, perm):
        self.tok, self.perm, self.back = tok, perm, {i: tok.get_vocab()[s] for s, i in perm.items()}
        self.added_tokens_decoder = {perm[tok.convert_ids_to_tokens(i)]: t for i, t in tok.added_tokens_decoder.items()}

    def get_vocab(self):
        return dict(self.perm)

    def batch_decode(self, seqs, **kw):
        return self.tok.batch_decode([[self.back[i] for i in s] for s in seqs], **kw)


# ---------------------------------------------------------------------------------------------------------------
# (b) two tokenizers: the one-pass result == one forward per prefix and explicit loops


def _token_bytes(tok, i):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    inv = {c: b for b, c in bytes_to_unicode().items()}
    raw = tok.convert_ids_to_tokens(int(i))
    if int(i) in tok.all_special_ids:
        return raw.encode()
    return bytes(inv[c] for c in raw)


def _reference_map(tok_e, tok_a):
    """M by an explicit loop over amateur ids: the expert token of the same bytes (same raw token), else the first
    expert token of the text, the EOS to the expert's EOS; unfinished characters and unknown specials unmapped."""
    e_raw = {tok_e.convert_ids_to_tokens(e): e for e in range(len(tok_e))}
    m = {}
    for u in range(len(tok_a)):
        raw, data = tok_a.convert_ids_to_tokens(u), _token_bytes(tok_a, u)
        if raw in e_raw and _token_bytes(tok_e, e_raw[raw]) == data:
            m[u] = e_raw[raw]
        elif u == tok_a.eos_token_id:
            m[u] = tok_e.eos_token_id
        elif u not in tok_a.all_special_ids:
            try:
                m[u] = tok_e.encode(data.decode("utf-8"), add_special_tokens=False)[0]
            except UnicodeDecodeError:
                pass
    return m


def _groups(tok_e, y):
    """Expert tokens grouped into whole UTF-8 characters, by their bytes."""
    groups, cur = [], []
    for i in y:
        cur.append(i)
        try:
            b"".join(_token_bytes(tok_e, j) for j in cur).decode("utf-8")
        except UnicodeDecodeError:
            continue
        groups.append(cur)
        cur = []
    return groups + ([cur] if cur else [])


def _probs(model, ids):
    with torch.no_grad():
        return torch.softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)


def _reference(expert, amateur, tok_e, tok_a, question, y):
    """Per step: (code, kl, label ids, label weights) by one forward per prefix and explicit loops."""
    pe, pa = build_prompt_ids(tok_e, question), build_prompt_ids(tok_a, question)
    m = _reference_map(tok_e, tok_a)
    body = y[:-1] if y[-1] == tok_e.eos_token_id else y
    pieces = [tok_a.encode(b"".join(_token_bytes(tok_e, j) for j in g).decode("utf-8"), add_special_tokens=False)
              for g in _groups(tok_e, body)]
    out, t, read = [], 0, []
    for g, enc in zip(_groups(tok_e, body), pieces):
        codes = ("a" if len(enc) == 1 else "m") if len(g) == 1 else "p"
        out.append(_ref_step(expert, amateur, pe + y[:t], pa + read, y[t], enc if len(g) == 1 else [], m) + (codes,))
        out += [None] * (len(g) - 1)
        t, read = t + len(g), read + enc
    if len(body) < len(y):
        out.append(_ref_step(expert, amateur, pe + y[:t], pa + read, y[t], [], m) + ("a",))
    return out


def _ref_step(expert, amateur, e_ctx, a_ctx, target, path, m):
    p = _probs(amateur, a_ctx)
    q = torch.zeros(ROWS, dtype=torch.float64)
    for u in range(ROWS):
        if u in m:
            q[m[u]] += float(p[u])
    if path:
        big_p = 1.0
        for k, u in enumerate(path):  # one forward per path token
            big_p *= float(_probs(amateur, a_ctx + path[:k])[u])
        if path[0] in m:
            q[m[path[0]]] -= big_p
        q[target] += big_p
    q = q / q.sum()
    q = (1 - X.FLOOR) * q + X.FLOOR / ROWS
    with torch.no_grad():
        le = expert(torch.tensor([e_ctx])).logits[0, -1:].float()
    red = reduce_step(le, torch.log(q).float()[None], 0.2)
    n = int((red.label_ids[0] >= 0).sum())
    return float(red.kl[0]), red.label_ids[0, :n].tolist(), red.label_weights[0, :n].tolist()


def _score_chosen(expert, amateur, tok_e, tok_a, question, text, params):
    """Score a chosen completion (the expert's tokens of ``text`` + EOS) through the text path."""
    y = tok_e.encode(text, add_special_tokens=False) + [tok_e.eos_token_id]
    pe = build_prompt_ids(tok_e, question)
    with torch.no_grad():
        h = hidden_states(expert, [pe + y[:-1]])[0][len(pe) - 1:]
    tr = SA._Trajectory()
    tr.completion = y
    score_text(expert, amateur, [build_prompt_ids(tok_a, question)], [tr], h[None], _text(tok_e, tok_a, amateur),
               params)
    return y, tr


CHOSEN = " the cat ate 12 é and ü the 23"


def test_text_path_equals_one_forward_per_prefix(pair):
    tok_e, tok_a = pair
    expert, amateur = tiny_causal_lm(seed=1), tiny_causal_lm(seed=2)
    params = SA.ScoringParams(beta=0.0, include_first_step=True, chunk_steps=5)
    y, tr = _score_chosen(expert, amateur, tok_e, tok_a, QUESTIONS[1], CHOSEN, params)
    ref = _reference(expert, amateur, tok_e, tok_a, QUESTIONS[1], y)
    assert tr.alignment == "".join("s" if r is None else r[3] for r in ref)
    assert {"a", "m", "p", "s"} <= set(tr.alignment)  # every class occurs
    kept = {s["pos"]: s for s in tr.steps}
    for t, r in enumerate(ref):
        if r is None:
            assert tr.kl[t] is None and t not in kept
            continue
        kl, ids, weights, _ = r
        assert tr.kl[t] == pytest.approx(kl, abs=2e-4, rel=1e-4)
        assert kept[t]["token_ids"] == ids
        assert kept[t]["weights"] == pytest.approx(weights, abs=1e-4)
    # the marginalised steps moved real mass: without the move, q(y_t) would be smaller
    assert tr.alignment[0] == "m"  # " the" -> " " + "the" for the amateur


def _ascii_expert(tok):
    """A tiny expert steered to ASCII text (an output bias against other bytes, padding and specials but EOS)."""
    model = tiny_causal_lm(seed=1)
    bias = torch.full((ROWS,), -30.0)
    for i in range(len(tok)):
        if i == tok.eos_token_id or (i not in tok.all_special_ids and max(_token_bytes(tok, i)) < 0x80):
            bias[i] = 0.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


def test_generated_trajectories_on_the_text_path(pair):
    tok_e, tok_a = pair
    expert, amateur = _ascii_expert(tok_e), tiny_causal_lm(seed=2)
    prompts = [build_prompt_ids(tok_e, q) for q in QUESTIONS]
    a_prompts = [build_prompt_ids(tok_a, q) for q in QUESTIONS]
    assert a_prompts[0] != prompts[0] and "Question: " in tok_a.decode(a_prompts[0])  # its own (plain) prompt
    params = SA.ScoringParams(max_new_tokens=12, beta=0.0, chunk_steps=7)
    text = _text(tok_e, tok_a, amateur)
    assert not text.vmap.fast
    trajs = SA.sample_batch(expert, amateur, prompts, [tok_e.eos_token_id], tok_e.pad_token_id, ROWS, params,
                            text=text, amateur_prompts=a_prompts)
    for q, tr in zip(QUESTIONS, trajs):
        assert len(tr.alignment) == len(tr.kl) == len(tr.completion)
        ref = _reference(expert, amateur, tok_e, tok_a, q, tr.completion)
        assert tr.alignment == "".join(r[3] for r in ref)  # ASCII: nothing skipped
        assert tr.kl == pytest.approx([r[0] for r in ref], abs=2e-4, rel=1e-4)
    codes = "".join(tr.alignment for tr in trajs)
    assert "a" in codes and "m" in codes


# ---------------------------------------------------------------------------------------------------------------
# (c) q_A is a distribution; the pushforward is the loop


def test_q_sums_to_one_and_pushforward_is_the_loop():
    torch.manual_seed(0)
    n, ra, ve = 6, 40, 30
    logp = torch.log_softmax(torch.randn(n, ra) * 3, -1)
    first = torch.randint(0, ve, (ra,))
    first[::7] = -1
    q, dropped = X.pushforward(logp, first, ve)
    loop = torch.zeros(n, ve)
    for u in range(ra):
        if first[u] >= 0:
            loop[:, first[u]] += logp[:, u].exp()
    assert torch.allclose(q, loop, atol=1e-6)
    assert torch.allclose(dropped, logp.exp()[:, first < 0].sum(-1), atol=1e-6)
    targets = torch.randint(0, ve, (n,))
    path_first = torch.tensor([3, 7, -1, 14, 0, 5])  # 7 and 14 unmapped, one step without a path
    path_logp = logp[torch.arange(n), path_first.clamp(min=0)] + torch.log(torch.rand(n))
    logq, left = X.amateur_logq(logp, first, ve, targets, path_first, path_logp)
    assert torch.allclose(logq.exp().sum(-1), torch.ones(n), atol=1e-5)
    assert bool((left <= dropped + 1e-7).all()) and bool((left >= 0).all())
    assert left[1] < dropped[1] and left[2] == dropped[2]  # a path out of an unmapped token takes dropped mass


def test_the_expert_eos_ids_are_one_class_for_the_amateur(pair):
    """An expert that may stop on either of two EOS ids (tokenizer and generation config): the amateur's mass on
    ending lands on the id the expert wrote, whichever it is; an amateur EOS whose twin is no expert EOS still maps
    to the expert's EOS."""
    tok_e, tok_a = pair
    im_end_e, text_end_e = tok_e.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    im_end_a, text_end_a = tok_a.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    vmap = X.build_vocab_map(tok_e, tok_a, expert_rows=ROWS, amateur_rows=ROWS, amateur_eos=[im_end_a],
                             expert_eos=[im_end_e, text_end_e])
    assert int(vmap.first[im_end_a]) == im_end_e  # its twin, an expert EOS
    y = tok_e.encode("hi", add_special_tokens=False) + [text_end_e]
    assert X.align(y, tok_e, tok_a, {im_end_e, text_end_e}).codes == "aaa"
    logp = torch.log_softmax(torch.full((2, ROWS), -30.0).index_fill_(1, torch.tensor([im_end_a]), 0.0), -1)
    targets = torch.tensor([text_end_e, tok_e.convert_tokens_to_ids("h")])  # the EOS step; an ordinary step
    none = torch.tensor([-1, -1])
    eos = torch.tensor(sorted({im_end_e, text_end_e}))
    q = X.amateur_logq(logp, vmap.first, ROWS, targets, none, torch.zeros(2), eos)[0].exp()
    assert q[0, text_end_e] > 0.99 and q[0, im_end_e] < 1e-5  # ending, on the id the expert wrote
    assert q[1, im_end_e] > 0.99 and q[1, text_end_e] < 1e-5  # not an EOS step: nothing moves
    one = X.amateur_logq(logp, vmap.first, ROWS, targets, none, torch.zeros(2), eos[:1])[0]
    assert torch.equal(one, X.amateur_logq(logp, vmap.first, ROWS, targets, none, torch.zeros(2))[0])  # one id
    # the amateur ends on <|endoftext|>, whose twin is no EOS of an expert that ends on <|im_end|> alone
    vmap = X.build_vocab_map(tok_e, tok_a, expert_rows=ROWS, amateur_rows=ROWS, amateur_eos=[text_end_a],
                             expert_eos=[im_end_e])
    assert int(vmap.first[text_end_a]) == im_end_e and int(vmap.first[im_end_a]) == im_end_e


def test_an_amateur_tokenizer_beyond_its_model_rows_is_refused(pair):
    tok_e, tok_a = pair
    top = max(tok_a.get_vocab().values())
    with pytest.raises(X.InputError, match=f"ids up to {top}, beyond its model's {top} output rows"):
        text_path(tok_e, tok_a, expert_rows=ROWS, amateur_rows=top, expert_eos=[tok_e.eos_token_id],
                  amateur_eos=[tok_a.eos_token_id])


# ---------------------------------------------------------------------------------------------------------------
# (d) mid-character steps are skipped and counted


def test_a_step_inside_a_character_is_skipped_and_counted(pair):
    tok_e, tok_a = pair
    y = tok_e.encode("a ü b", add_special_tokens=False) + [tok_e.eos_token_id]
    al = X.align(y, tok_e, tok_a, {tok_e.eos_token_id})
    assert len(y) == 7 and al.codes == "aapsaaa"  # "ü": two expert bytes, one amateur token
    assert al.ids == tok_a.encode("a ü b", add_special_tokens=False) and al.at == [0, 1, 2, -1, 3, 4, 5]
    rec = {"alignment": al.codes, "dropped_mass": 0.6}
    assert X.alignment_summary([rec, rec]) == {"aligned": 10, "marginalised": 0, "approximated": 2, "skipped": 2,
                                               "mean_dropped_mass": 0.1}
    # a completion cut inside a character: its last step is approximated, nothing after it is read
    cut = tok_e.encode("ab ü", add_special_tokens=False)[:-1]
    assert X.align(cut, tok_e, tok_a, {tok_e.eos_token_id}).codes == "aaap"


# ---------------------------------------------------------------------------------------------------------------
# (e), (f) the stage: the choice, its log line and manifest; lockstep


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory, pair):
    root = tmp_path_factory.mktemp("pair")
    out = []
    for name, seed, tok in (("expert", 1, pair[0]), ("amateur", 2, pair[1])):
        model = tiny_causal_lm(seed=seed)
        model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(str(root / name))
    return out


def test_sample_takes_the_text_path_by_itself_and_records_it(pair_dirs, tmp_path, gsm8k_file, caplog, capsys):
    edir, adir = pair_dirs
    out = tmp_path / "s.jsonl"
    args = ["sample", "--expert", edir, "--amateur", adir, "--data", str(gsm8k_file), "--output", str(out),
            "--max-new-tokens", "10", "--batch-size", "2", "--beta", "0.5", "--no-progress"]
    with caplog.at_level(logging.INFO):
        assert cli_main(args) == 0
    assert "text path; auto: the tokenizers differ" in caplog.text
    recs = read_complete_jsonl(out)
    m = json.loads(S.manifest_path(out).read_text())
    path = m["amateur_tokens"]
    codes = "".join(r["alignment"] for r in recs)
    assert path["path"] == "text" and path["reason"].startswith("auto") and not path["fast_path"]
    # every amateur token maps (bytes and specials are twins); what is dropped is the random padding rows' mass
    assert path["unmapped_amateur_ids"] == 0 and path["mean_dropped_mass"] > 0
    assert {k: path[k] for k in ("aligned", "marginalised", "approximated", "skipped")} == {
        name: codes.count(c) for c, name in X.CODES.items()}
    scored = len(codes) - path["skipped"]
    assert m["counts"]["steps"] == scored and path["mean_dropped_mass"] == pytest.approx(
        sum(r["dropped_mass"] for r in recs) / scored, abs=1e-8)
    for r in recs:
        assert len(r["alignment"]) == len(r["kl"]) == len(r["completion_ids"])
        assert all((k is None) == (c == "s") for k, c in zip(r["kl"], r["alignment"]))
        assert all(r["alignment"][s["pos"]] != "s" for s in r["steps"])
    if m["counts"]["kept_steps"]:
        capsys.readouterr()
        assert cli_main(["inspect", "--samples", str(out), "--limit", "1"]) == 0
        assert any(f"({name})" in capsys.readouterr().out for name in X.CODES.values())


def test_forcing_ids_on_differing_tokenizers_keeps_the_old_error(pair_dirs, tmp_path, capsys):
    edir, adir = pair_dirs
    assert cli_main(["sample", "--expert", edir, "--amateur", adir, "--output", str(tmp_path / "s.jsonl"),
                     "--amateur-tokens", "ids", "--max-problems", "1", "--no-progress"]) == 2
    assert "--allow-vocab-mismatch" in capsys.readouterr().err


def test_lockstep_with_the_text_path_is_an_error_naming_both_options(pair_dirs, tmp_path, capsys):
    edir, adir = pair_dirs
    out = tmp_path / "s.jsonl"
    assert cli_main(["sample", "--output", str(out), "--amateur-pass", "lockstep", "--amateur-tokens", "text"]) == 2
    err = capsys.readouterr().err
    assert "--amateur-pass" in err and "--amateur-tokens" in err
    # auto picks the text path for these models: the same error, after loading them and before sampling
    assert cli_main(["sample", "--expert", edir, "--amateur", adir, "--output", str(out), "--amateur-pass",
                     "lockstep", "--max-problems", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--amateur-pass" in err and "--amateur-tokens" in err and not out.exists()


def test_readers_of_the_kl_lists_skip_null_steps():
    from lightreasoner.report.steps import _steps_view

    rec = {"id": "p", "kl": [0.1, None, 0.5], "expert_entropy": [1.0, None, 2.0], "amateur_entropy": [1.0, None, 3.0],
           "top1_agree": [True, None, False], "completion_ids": [1, 2, 3], "alignment": "asm", "dropped_mass": 0.2,
           "steps": [{"pos": 2, "kl": 0.5, "token_ids": [7], "weights": [1.0]}]}
    assert _steps_view([rec])["kl"] == [0.5]
    summary = S.summarize([rec], beta=0.4)
    assert summary["counts"]["steps"] == 2 and summary["counts"]["kept_fraction"] == 0.5
    assert summary["alignment"] == {"aligned": 1, "marginalised": 1, "approximated": 0, "skipped": 1,
                                    "mean_dropped_mass": 0.1}


def _sentencepiece_tokenizer(prepend: bool):
    """A Llama-2-style tokenizer: spaces as "▁"; ``prepend``: a "▁" before every encoded text; the decoder strips
    one leading space (so a whole text round-trips either way)."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "b": 5, "▁a": 6, "▁b": 7}
    tk = Tokenizer(models.BPE(vocab, [("▁", "a"), ("▁", "b")], unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁")] * prepend + [normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("prepend, symptom", [(True, "each get a prefix space"),
                                              (False, "lose their leading spaces")])
def test_a_tokenizer_that_cannot_encode_piecewise_is_refused_by_name(pair, prepend, symptom):
    tok = _sentencepiece_tokenizer(prepend)
    assert tok.decode(tok.encode("a b", add_special_tokens=False)) == "a b"  # the old round-trip probe passes
    X.check_piecewise(pair[1], "amateur")  # a byte-level tokenizer passes all three probes
    with pytest.raises(X.InputError, match=f"amateur's tokenizer .*{symptom}"):
        X.check_piecewise(tok, "amateur")
    with pytest.raises(X.InputError, match="expert's tokenizer"):
        text_path(tok, pair[1], expert_rows=ROWS, amateur_rows=ROWS, expert_eos=[2], amateur_eos=[pair[1].eos_token_id])
