"""The sampling prompt: a chat template's rendering as is; a plain prompt with the tokenizer's own special tokens."""

from tokenizers import processors

from lightreasoner.prompts import build_prompt_ids
from lightreasoner.testing import byte_tokenizer


def _with_bos(tok):
    """The byte tokenizer, made to put <|endoftext|> first as a BOS (as Gemma's puts <bos>)."""
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    return tok, bos


def test_plain_prompt_gets_the_tokenizers_bos():
    tok, bos = _with_bos(byte_tokenizer(with_chat_template=False))
    ids = build_prompt_ids(tok, "What is 2 + 3?", "Think.")
    assert ids[0] == bos and ids.count(bos) == 1
    assert tok.decode(ids[1:]) == "Think.\n\nQuestion: What is 2 + 3?\nAnswer:"


def test_chat_template_rendering_is_not_given_a_second_bos():
    tok, bos = _with_bos(byte_tokenizer())
    ids = build_prompt_ids(tok, "What is 2 + 3?", "Think.")
    assert bos not in ids
    assert tok.decode(ids).startswith("<|im_start|>system\nThink.<|im_end|>")
