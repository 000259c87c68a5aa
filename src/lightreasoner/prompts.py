"""Prompts, stop strings and end-of-sequence ids: the one home of each (every stage imports them from here).

Two system messages are used:

- :data:`BOXED_SYSTEM_PROMPT`, the Qwen2.5-Math toolkit's (``qwen25-math-cot``), for evaluation: both the raw
  template :data:`QWEN25_MATH_COT_TEMPLATE` (``/work/shared/EVAL_SPEC.md`` section 3, quoted as data) and the
  ``--prompt chat`` form carry it;
- :data:`PLAIN_SYSTEM_PROMPT` (= :data:`DEFAULT_SYSTEM_PROMPT`), the authors', for sampling, training and SFT:
  :func:`build_prompt_ids` puts it in the model's own chat template.

Generation stops at an EOS id (:func:`eos_ids`) or at one of :data:`STOP_STRINGS` (checked on the text).
"""

from __future__ import annotations

from typing import Any, Sequence

from .utils import InputError

BOXED_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PLAIN_SYSTEM_PROMPT = "Please reason step by step."
DEFAULT_SYSTEM_PROMPT = PLAIN_SYSTEM_PROMPT  # sampling, training and SFT (the authors' choice)

# Stop strings of the qwen25-math-cot prompt type (spec section 2); also where a completion is cut afterwards.
STOP_STRINGS: tuple[str, ...] = ("</s>", "<|im_end|>", "<|endoftext|>")

# The toolkit's raw ChatML prompt; ``{input}`` is the user turn (no chat template is applied to it).
QWEN25_MATH_COT_TEMPLATE = ("<|im_start|>system\n" + BOXED_SYSTEM_PROMPT + "<|im_end|>\n"
                            "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n")
PROMPT_TYPES = ("qwen25-math", "chat")  # evaluation: the raw template, or the model's chat template


def few_shot_input(question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The toolkit's user turn: demos ``q + "\\n" + a`` joined by blank lines, then a blank line and the question."""
    if not shots:
        return question
    return "\n\n".join(q + "\n" + a for q, a in shots) + "\n\n" + question


def build_qwen25_math_prompt(question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The raw ``qwen25-math-cot`` prompt string (ChatML markup included; no chat template is applied).

    Few-shot: each demo becomes ``q + "\\n" + a``; demos are joined by a blank line and the question follows after
    another blank line, all inside one user turn. Only spaces are stripped from the ends.
    """
    return QWEN25_MATH_COT_TEMPLATE.replace("{input}", few_shot_input(question, shots)).strip(" ")


def chat_text(tokenizer: Any, system_prompt: str, user: str) -> str:
    """The tokenizer's chat template over a system turn and one user turn, with the generation prompt.

    Raises ``ValueError`` when the tokenizer has no chat template (callers decide what that means).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompt_ids(tokenizer: Any, question: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """Token ids of the chat prompt used for sampling, training and SFT (system + user turn, generation prompt).

    Without a chat template: ``"{system}\\n\\nQuestion: {question}\\nAnswer:"``, encoded with the tokenizer's own
    special tokens (a rendered chat template already holds them; a plain text does not, and Gemma-3 writes only
    repetition without its ``<bos>`` first).
    """
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer(chat_text(tokenizer, system_prompt, question), add_special_tokens=False)["input_ids"])
    text = f"{system_prompt}\n\nQuestion: {question}\nAnswer:"
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def encode_prompts(tokenizer: Any, prompts: Sequence[str], prompt_type: str = "qwen25-math") -> list[list[int]]:
    """Token ids of evaluation prompt texts. The raw template is encoded as vLLM does (the tokenizer's special
    tokens added, none for Qwen); a rendered chat template (``prompt_type="chat"``) already holds them."""
    if not prompts:
        return []
    enc = tokenizer(list(prompts), add_special_tokens=prompt_type != "chat")["input_ids"]
    return [list(ids) for ids in enc]


def eos_ids(tokenizer: Any, model: Any = None, stop_strings: Sequence[str] = ()) -> list[int]:
    """The ids that end a sequence, sorted: the tokenizer's EOS, the EOS ids of ``model``'s generation config,
    and each of ``stop_strings`` that is a single token (evaluation passes :data:`STOP_STRINGS`; sampling none).

    Raises :class:`InputError` when there is none (no sequence could end before its length limit).
    """
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    for s in stop_strings:
        enc = tokenizer.encode(s, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(int(enc[0]))
    if not ids:
        raise InputError("the model's tokenizer has no eos token and its generation config names none; set one "
                         "(tokenizer.eos_token, or eos_token_id in generation_config.json)")
    return sorted(ids)
