"""``--amateur self:LAYER``: the expert's own early layers as the amateur, held to the slow obvious computation."""

from __future__ import annotations

import pytest
import torch

from lightreasoner import layout
from lightreasoner import sampling as SA
from lightreasoner.decoder import CachedDecoder, hidden_states
from lightreasoner.earlyexit import early_exit_view, parse_self_spec, self_fingerprint
from lightreasoner.models import LoadedModel, check_vocab, load_amateur, revision_problem
from lightreasoner.prompts import build_prompt_ids
from lightreasoner.testing import byte_tokenizer, tiny_causal_lm
from lightreasoner.utils import InputError

LAYERS = 4
SEQS = [[5, 17, 99, 3, 250, 40, 41], [7, 8], [300, 12, 12, 12, 64]]


def tiny_llama(seed: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=None, eos_token_id=256, pad_token_id=257)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request):
    return tiny_causal_lm(seed=5, num_hidden_layers=LAYERS) if request.param == "qwen2" else tiny_llama()


def reference(model, ids, layer):
    """The slow obvious computation: the full model's hidden state after decoder layer ``layer`` through its
    final norm and output layer."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return model.lm_head(model.model.norm(out.hidden_states[layer]))[0]


def plain(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("layer", range(1, LAYERS))
def test_view_logits_are_the_early_hidden_state_through_norm_and_head(model, layer):
    view = early_exit_view(model, layer)
    for ids in SEQS:
        torch.testing.assert_close(plain(view, ids), reference(model, ids, layer), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain(view, SEQS[0]), plain(model, SEQS[0]), atol=1e-3)  # not the expert


def test_view_shares_every_parameter_and_leaves_the_expert_alone(model):
    before = [plain(model, ids) for ids in SEQS]
    expert_ptrs = {p.data_ptr() for p in model.parameters()}
    view = early_exit_view(model, 2)
    view_params = list(view.parameters())
    assert view_params and {p.data_ptr() for p in view_params} <= expert_ptrs  # no new storage
    assert view.get_output_embeddings().weight is model.get_output_embeddings().weight
    assert view.get_output_embeddings() is not model.get_output_embeddings()  # hooks of its own
    assert len(view.model.layers) == 2 and view.config.num_hidden_layers == 2
    assert len(model.model.layers) == LAYERS and model.config.num_hidden_layers == LAYERS
    if hasattr(model.config, "layer_types"):  # Qwen2's per-layer list is cut too, the expert's kept
        assert len(view.config.layer_types) == 2 and len(model.config.layer_types) == LAYERS
    plain(view, SEQS[0])
    list(hidden_states(view, SEQS))
    for ids, old in zip(SEQS, before):
        assert torch.equal(plain(model, ids), old)


def test_tied_embeddings_are_shared_too():
    model = tiny_causal_lm(seed=6, num_hidden_layers=LAYERS, tie_word_embeddings=True)
    view = early_exit_view(model, 3)
    assert view.get_output_embeddings().weight is model.get_input_embeddings().weight
    torch.testing.assert_close(plain(view, SEQS[0]), reference(model, SEQS[0], 3), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_packed_hidden_states_and_cached_decoder_on_the_view_equal_its_forward(model):
    view = early_exit_view(model, 2)
    head = view.get_output_embeddings()
    for ids, h in zip(SEQS, hidden_states(view, SEQS)):
        torch.testing.assert_close(head(h), plain(view, ids), atol=1e-4, rtol=1e-4)
    dec = CachedDecoder(view, capture_hidden=True)
    first = dec.prefill(SEQS)
    nxt = dec.step(torch.tensor([10, 11, 12]))
    dec.keep([2, 0])
    last = dec.step(torch.tensor([20, 21]))
    dec.close()
    for row, ids in enumerate(SEQS):
        torch.testing.assert_close(first[row], plain(view, ids)[-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(nxt[row], plain(view, ids + [10 + row])[-1], atol=1e-4, rtol=1e-4)
    for row, ids in enumerate([SEQS[2] + [12, 20], SEQS[0] + [10, 21]]):
        torch.testing.assert_close(last[row], plain(view, ids)[-1], atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_expert_and_view_decoders_alive_together_each_equal_their_own(model):
    view = early_exit_view(model, 1)
    hooks = [dict(m.get_output_embeddings()._forward_pre_hooks) for m in (model, view)]
    dec_e, dec_v = CachedDecoder(model, capture_hidden=True), CachedDecoder(view, capture_hidden=True)
    assert len(view.get_output_embeddings()._forward_pre_hooks) == len(hooks[1]) + 1  # its own hook only
    assert len(model.get_output_embeddings()._forward_pre_hooks) == len(hooks[0]) + 1
    prompts = SEQS[:2]
    got = {"e": [dec_e.prefill(prompts)], "v": [dec_v.prefill(prompts)]}
    fed = [[], []]
    for t in range(3):  # interleaved, the way lockstep sampling runs them
        tokens = got["e"][-1].argmax(-1)
        for row, tok in enumerate(tokens.tolist()):
            fed[row].append(tok)
        got["e"].append(dec_e.step(tokens))
        assert dec_e.last_hidden is not None
        got["v"].append(dec_v.step(tokens))
        torch.testing.assert_close(model.get_output_embeddings()(dec_e.last_hidden), got["e"][-1])
        torch.testing.assert_close(view.get_output_embeddings()(dec_v.last_hidden), got["v"][-1])
    dec_e.close()
    dec_v.close()
    assert [dict(m.get_output_embeddings()._forward_pre_hooks) for m in (model, view)] == hooks
    for who, m in (("e", model), ("v", view)):
        for t, logits in enumerate(got[who]):
            for row, ids in enumerate(prompts):
                ref = plain(m, ids + fed[row][:t])[-1]
                torch.testing.assert_close(logits[row], ref, atol=1e-4, rtol=1e-4)


def test_sampling_against_the_view_is_the_same_in_both_amateur_passes():
    tokenizer = byte_tokenizer()
    expert = tiny_causal_lm(seed=1, num_hidden_layers=LAYERS)
    view = early_exit_view(expert, 2)
    prompts = [build_prompt_ids(tokenizer, q) for q in ("What is 3+4?", "x", "Sara had 20 dollars.")]
    records = {}
    for mode in ("teacher-forced", "lockstep"):
        params = SA.ScoringParams(max_new_tokens=10, amateur_pass=mode, beta=0.0)
        trajs = SA.sample_batch(expert, view, prompts, [256], 257, 320, params)
        records[mode] = [(tr.completion, tr.kl, tr.agree, tr.steps) for tr in trajs]
    tf, ls = records["teacher-forced"], records["lockstep"]
    for a, b in zip(tf, ls):
        assert a[0] == b[0] and a[2] == b[2]
        assert a[1] == pytest.approx(b[1], abs=1e-4)
        assert [s["token_ids"] for s in a[3]] == [s["token_ids"] for s in b[3]]
    # the kl of a step is the one of the expert against its own early layer (the per-prefix computation)
    from lightreasoner.contrast import reduce_step

    comp = tf[0][0]
    for t in range(len(comp)):
        ids = prompts[0] + comp[:t]
        red = reduce_step(plain(expert, ids)[-1:], reference(expert, ids, 2)[-1:], 0.2)
        assert tf[0][1][t] == pytest.approx(float(red.kl[0]), abs=1e-4)
    assert any(k > 0.01 for k in tf[0][1])  # the early layer is a different distribution


@pytest.mark.parametrize("spec", ["self:", "self:x", "self:-1", "self:0", "self:1.5"])
def test_malformed_self_specs_name_the_option_and_the_form(spec):
    with pytest.raises(InputError, match=r"--amateur .*self:LAYER"):
        parse_self_spec(spec)


def test_other_specs_are_not_self_specs():
    assert parse_self_spec("self:12") == 12
    assert parse_self_spec("Qwen/Qwen2.5-0.5B") is None and parse_self_spec("./self") is None


@pytest.mark.parametrize("layer", [0, LAYERS, LAYERS + 3])
def test_layers_out_of_range_name_the_value_and_the_layer_count(model, layer):
    with pytest.raises(InputError, match=rf"--amateur self:{layer}: the expert has {LAYERS} decoder layers"):
        early_exit_view(model, layer)


def test_a_peft_wrapped_expert_is_refused_with_the_fix():
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny_causal_lm(seed=7, num_hidden_layers=LAYERS),
                             LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(InputError, match="merge the adapter"):
        early_exit_view(wrapped, 2)


def test_load_amateur_describes_and_fingerprints_the_early_layer(model):
    tokenizer = byte_tokenizer()
    expert = LoadedModel(model, tokenizer, "expert-folder", "sha256:abc")
    amateur = load_amateur("self:2", expert)
    assert amateur.tokenizer is tokenizer and amateur.spec == "self:2"
    assert amateur.fingerprint == "self:2 of sha256:abc" == self_fingerprint("sha256:abc", 2)
    assert load_amateur("self:3", expert).fingerprint != amateur.fingerprint
    d = amateur.describe()
    assert (d["spec"], d["kind"], d["layer"], d["layers_of_expert"]) == ("self:2", "early exit", 2, LAYERS)
    assert d["of"] == expert.describe() and d["fingerprint"] == amateur.fingerprint
    assert d["parameters"] < expert.describe()["parameters"] and d["vocab_rows"] == 320
    assert check_vocab(expert, amateur) == 320
    with pytest.raises(InputError, match="--amateur-revision 'main'.*expert's"):
        load_amateur("self:2", expert, revision="main")


def test_a_revision_for_a_self_amateur_is_a_problem_before_anything_loads():
    problem = revision_problem("self:3", "v1", "--amateur-revision")
    assert problem and "--amateur-revision 'v1'" in problem and "--expert-revision" in problem
    assert revision_problem("self:3", None, "--amateur-revision") is None


def test_stage_input_of_a_self_amateur_follows_the_expert_and_the_layer(tmp_path):
    tokenizer = byte_tokenizer()
    model = tiny_causal_lm(seed=8)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    folder = str(tmp_path / "m")
    assert layout.model_input("self:4") == "self:4"  # never resolved as a model
    a = layout.amateur_input("self:4", None, "sha256:e1")
    assert a == "self:4 of sha256:e1"
    assert layout.amateur_input("self:5", None, "sha256:e1") != a
    assert layout.amateur_input("self:4", None, "sha256:e2") != a
    assert layout.amateur_input(folder, None, "sha256:e1") == layout.model_input(folder)
    with pytest.raises(InputError, match="--amateur 'self:x'.*self:LAYER"):
        layout.amateur_input("self:x", None, "sha256:e1")
    with pytest.raises(InputError, match="--amateur-revision"):
        layout.amateur_input("self:4", "v1", "sha256:e1")



def test_sample_cli_with_self_layer_amateur(model_dirs, tmp_path, gsm8k_file, capsys):
    """`lightreasoner sample --amateur self:1`: the manifest says what the amateur is, its identity names the
    expert, and a layer the expert lacks or a malformed spec stops before any record is written."""
    import json

    from lightreasoner import sample as S
    from lightreasoner.cli import main as cli_main

    edir, _ = model_dirs

    def args(amateur: str, out) -> list[str]:
        return ["sample", "--expert", edir, "--amateur", amateur, "--data", str(gsm8k_file), "--output", str(out),
                "--max-new-tokens", "6", "--batch-size", "2", "--beta", "0", "--no-progress"]

    out = tmp_path / "s" / "samples.jsonl"
    assert cli_main(args("self:1", out)) == 0
    m = json.loads(S.manifest_path(out).read_text())
    assert m["amateur"]["kind"] == "early exit" and m["amateur"]["layer"] == 1
    assert m["amateur"]["of"]["fingerprint"] == m["expert"]["fingerprint"]
    assert m["identity"]["inputs"]["amateur"].startswith("self:1 of ")
    assert m["counts"]["kept_steps"] > 0 and m["complete"]
    capsys.readouterr()
    bad = tmp_path / "t" / "samples.jsonl"
    assert cli_main(args("self:x", bad)) == 2
    assert "--amateur 'self:x'" in capsys.readouterr().err
    assert cli_main(args("self:2", bad)) == 2  # the tiny expert has 2 layers
    err = capsys.readouterr().err
    assert "--amateur" in err and "2" in err
    assert not bad.exists()
