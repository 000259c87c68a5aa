"""Tiny models and a tokenizer built in memory, for tests and benchmarks (no downloads).

``byte_tokenizer()`` is a byte-level BPE without merges (every byte one token) plus the Qwen2.5 special tokens
and a ChatML chat template, so prompts look like the real ones. ``tiny_causal_lm()`` builds a randomly
initialised Qwen2 model of any shape (``qwen2_shape('1.5b')`` gives the Qwen2.5-1.5B dimensions).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(with_chat_template: bool = True, extra_tokens: tuple[str, ...] = (),
                   merges: Sequence[tuple[str, str]] = ()) -> Any:
    """A fast tokenizer whose ids 0..255 are bytes, then the tokens ``merges`` make (BPE merges of byte-level
    characters, e.g. ``("Ġ", "t")``), then ``extra_tokens``, then the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for t in [a + b for a, b in merges] + list(extra_tokens):
        vocab.setdefault(t, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    if with_chat_template:
        tok.chat_template = CHATML_TEMPLATE
    return tok


def qwen2_shape(size: str) -> dict[str, int]:
    """Dimensions of the Qwen2.5 models (for benchmarks on random weights)."""
    shapes = {
        "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2),
        "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2),
        "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
    }
    return shapes[size]


def tiny_causal_lm(vocab_size: int = 320, seed: int = 0, size: str = "tiny", dtype: torch.dtype = torch.float32,
                   tie_word_embeddings: bool = False, **overrides: Any) -> Any:
    """A randomly initialised Qwen2ForCausalLM (``vocab_size`` rows may exceed the tokenizer's: padding)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {**qwen2_shape(size), **overrides}
    cfg = Qwen2Config(vocab_size=vocab_size, max_position_embeddings=4096, tie_word_embeddings=tie_word_embeddings,
                      bos_token_id=None, eos_token_id=256, pad_token_id=257, **shape)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    if size == "tiny":
        # Larger-than-default init so random models have peaked, diverse next-token distributions.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def two_tokenizers() -> tuple[Any, Any]:
    """An expert and an amateur tokenizer that differ (the text path): the expert merges " th" and "12", which the
    amateur reads as two tokens ("Ġ" "th", "1" "2"); the amateur merges " a" and "23", and has no chat template."""
    return (byte_tokenizer(merges=[("Ġ", "t"), ("Ġt", "h"), ("1", "2")]),
            byte_tokenizer(with_chat_template=False, merges=[("t", "h"), ("Ġ", "a"), ("2", "3")]))


def steer(model: Any, ids: Sequence[int]) -> Any:
    """``model`` with an output bias of -30 on every row but ``ids``: a random model that writes only those."""
    head = model.get_output_embeddings()
    bias = torch.full((head.weight.shape[0],), -30.0, dtype=head.weight.dtype, device=head.weight.device)
    head.bias = torch.nn.Parameter(bias.index_fill_(0, torch.tensor(list(ids), device=bias.device), 0.0))
    return model


def gsm8k_style_rows() -> list[dict[str, str]]:
    """A few GSM8K-style problems with ``question`` and ``answer`` (CoT then ``#### n``)."""
    return [
        {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
         "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
        {"question": "A box holds 6 eggs. How many eggs are in 5 boxes?",
         "answer": "5 boxes hold 5 * 6 = <<5*6=30>>30 eggs.\n#### 30"},
        {"question": "Sara had 20 dollars and spent 8. How much money is left?",
         "answer": "She has 20 - 8 = <<20-8=12>>12 dollars left.\n#### 12"},
        {"question": "A train travels 60 miles per hour for 3 hours. How far does it go?",
         "answer": "It goes 60 * 3 = <<60*3=180>>180 miles.\n#### 180"},
        {"question": "Each of 4 friends gets 2 pencils. How many pencils is that in all?",
         "answer": "4 * 2 = <<4*2=8>>8 pencils.\n#### 8"},
    ]


def decode_with_logits(model: Any, prompts: Sequence[Sequence[int]], order: Sequence[int], *, eos_ids: Sequence[int],
                       pad_id: int, **kw: Any) -> tuple[dict[int, list[int]], dict[tuple[int, int], bytes]]:
    """Greedy completions of ``prompts`` fed in ``order`` through :func:`generation.stream`, and every step's
    logits as bytes, both keyed by the prompt's index in ``prompts`` (invariance tests compare them exactly)."""
    from .generation import stream

    logits: dict[tuple[int, int], bytes] = {}
    steps: dict[int, int] = {}

    def record(view: Any) -> None:
        for j, r in enumerate(view.rows.tolist()):
            i = order[r]
            logits[i, steps.get(i, 0)] = view.logits[j].float().cpu().numpy().tobytes()
            steps[i] = steps.get(i, 0) + 1

    done = {order[r]: c.ids for r, c, _ in stream(model, [prompts[i] for i in order], eos_ids=eos_ids,
                                                  pad_id=pad_id, on_step=record, **kw)}
    return done, logits


def invariance_runs(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int],
                    pad_id: int) -> tuple[tuple[dict, dict], list[tuple[dict, dict]]]:
    """The reference decoding of 8 ``prompts`` (batch size 1, in order) and the decodings an invariant engine must
    match bit for bit: batch sizes 1, 3 and 8 in two orders, and a run killed after five prompts and resumed.
    Each is :func:`decode_with_logits`' ``(completions, logits)``."""
    def run(order: Sequence[int], batch_size: int) -> tuple[dict, dict]:
        return decode_with_logits(model, prompts, order, eos_ids=eos_ids, pad_id=pad_id,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)

    in_order, shuffled = list(range(8)), [5, 2, 7, 0, 3, 6, 1, 4]
    runs = [run(order, b) for b in (1, 3, 8) for order in (in_order, shuffled) if (b, order) != (1, in_order)]
    (first, first_logits), (rest, rest_logits) = run(in_order[:5], 3), run(in_order[5:], 3)
    runs.append(({**first, **rest}, {**first_logits, **rest_logits}))
    return run(in_order, 1), runs
