"""Logits from hidden states as the model's forward computes them (lightreasoner.heads), on tiny random models of
the families that scale logits after the output layer; and sampling's scores on such a model are the model's own."""

from __future__ import annotations

import pytest
import torch

from lightreasoner import sampling as SA
from lightreasoner.contrast import reduce_step
from lightreasoner.heads import check_output_logits, output_logits
from lightreasoner.testing import tiny_causal_lm
from lightreasoner.utils import InputError

EOS, PAD, VOCAB = 256, 257, 320
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              num_hidden_layers=2, max_position_embeddings=512, bos_token_id=None, eos_token_id=EOS,
              pad_token_id=PAD)


def gemma2(seed: int = 0, cap: float = 2.0):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    return Gemma2ForCausalLM(Gemma2Config(**COMMON, head_dim=16, final_logit_softcapping=cap)).eval()


def cohere():
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(1)
    return CohereForCausalLM(CohereConfig(**COMMON, logit_scale=0.25)).eval()


def granite():
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(2)
    return GraniteForCausalLM(GraniteConfig(**COMMON, logits_scaling=4.0)).eval()


def _hidden_and_logits(model, ids):
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    hook.remove()
    return seen[-1], logits


@pytest.mark.parametrize("build", [gemma2, cohere, granite])
def test_output_logits_are_the_forward_logits_where_the_bare_head_is_not(build):
    model = build()
    with torch.no_grad():  # random heads give small logits: scale them so the transforms bite
        model.get_output_embeddings().weight.mul_(20.0)
    hidden, logits = _hidden_and_logits(model, torch.tensor([[5, 17, 99, 3, 42]]))
    with torch.no_grad():
        ours, bare = output_logits(model, hidden), model.get_output_embeddings()(hidden)
    torch.testing.assert_close(ours, logits)
    assert (bare - logits).abs().max() > 0.5  # the bare output layer would score another distribution
    check_output_logits(model, "expert")


class Doubled(torch.nn.Module):
    """A causal LM whose forward doubles the logits after the output layer (a transform heads does not know)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits = 2 * out.logits
        return out


def test_an_unknown_logit_transform_is_refused_by_name():
    check_output_logits(tiny_causal_lm(), "amateur")  # Qwen2: the bare output layer
    with pytest.raises(InputError, match="the amateur 'x' \\(Doubled\\) changes its logits after the output layer"):
        check_output_logits(Doubled(tiny_causal_lm()), "amateur 'x'")


@pytest.mark.parametrize("mode", ["teacher-forced", "lockstep"])
def test_sampling_scores_a_softcapped_pair_on_its_own_logits(mode):
    """Gemma 2 expert and amateur (softcapping at 2): every step's KL and agreement, from one pass, equal those of
    a full forward per prefix (the model's own logits)."""
    expert, amateur = gemma2(0), gemma2(1)
    for m in (expert, amateur):
        with torch.no_grad():
            m.get_output_embeddings().weight.mul_(20.0)
    prompts = [[5, 17, 99, 3], [42, 7, 7, 120, 64, 9]]
    params = SA.ScoringParams(max_new_tokens=8, amateur_pass=mode, beta=0.0)
    trajs = SA.sample_batch(expert, amateur, prompts, [EOS], PAD, VOCAB, params)
    for p, tr in zip(prompts, trajs):
        for t in range(len(tr.completion)):
            x = torch.tensor([p + tr.completion[:t]])
            with torch.no_grad():
                red = reduce_step(expert(x).logits[:, -1], amateur(x).logits[:, -1], params.alpha)
            assert tr.kl[t] == pytest.approx(float(red.kl[0]), abs=1e-4), (t, tr.kl[t], float(red.kl[0]))
            assert tr.agree[t] == bool(red.top1_agree[0])
