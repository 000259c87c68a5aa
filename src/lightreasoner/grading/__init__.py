"""Grading as the Qwen2.5-Math evaluation toolkit does it (prompt type ``qwen25-math-cot``), verdict for verdict.

This is an independent implementation of ``/work/shared/EVAL_SPEC.md`` (the toolkit in QwenLM/Qwen2.5-Math,
folder ``evaluation/``, snapshot a45202b). The pipeline for one (example, completion) pair is:

1. ``clean_completion``: right-strip, strip, cut at the first stop string (``</s>``, ``<|im_end|>``,
   ``<|endoftext|>``) and strip again.
2. ``extract_prediction`` = ``strip_string(extract_answer(text))``: predictions are normalised **twice**;
   an empty text (or ``"error"``) gives ``None``.
3. ``parse_gold``: the per-dataset gold, parsed in two passes exactly as the toolkit's generation loop and then its
   scorer do (MATH normalised once, Minerva once without unit removal, every other dataset twice).
4. The multiple-choice repair of the toolkit's main loop (a letter gold re-reads the whole completion).
5. ``math_equal``: the toolkit's 12 ordered rules. A comparison that the cheap rules decide never leaves this
   process; one that needs the symbolic step (sympy) runs whole in one reused worker process with a per-comparison
   timeout (3 s, as the toolkit's pebble pool), so a pathological answer costs at most the timeout and is wrong.

Hostile text. No model or file text ever reaches ``eval``/``exec``/``sympify``/``parse_expr``: where the toolkit
calls sympy's ``parse_expr`` (which ``eval``-s), a whitelisted walk over the answer's ``ast`` builds the same sympy
object (:func:`_parse_python`; anything off the whitelist is refused and the next parser tried), the two LaTeX
parsers get a ``sympy.Number`` that reads number tokens the same way instead of via ``sympify``
(:func:`_guard_latex_parsers`), and a side no parser read is only compared as a string. The worker also runs
under an address-space limit. Grading one answer is bounded as a whole: every cleaning regex is linear, a
completion longer than ``INPROCESS_MAX_CHARS`` is graded whole (cleaning, extraction, all rules) in the worker
under the timeout, and text longer than ``MAX_TEXT_CHARS`` is not graded (wrong, with the reason in ``error``).

``grade_many(..., grader="math-verify")`` gives Hugging Face Math-Verify's verdicts instead, as lighteval and
open-r1 compute them (:mod:`.mathverify`, run whole in the same bounded worker; golds: :mod:`.golds`). An example
may also be a :class:`StoredGold`, a gold as the toolkit's own per-sample output stores it (``lightreasoner grade``
on a toolkit file). :func:`grading_versions` names the libraries behind the verdicts, for the record.

Dependencies: sympy, latex2sympy2_extended (installed with math-verify; stands in for the toolkit's bundled
latex2sympy2 1.9.0), antlr4-python3-runtime (sympy's ``parse_latex`` wants 4.11; with another 4.x runtime we drive
sympy's own generated 4.11 parser directly, which the runtime accepts), word2number.

A library only: the benchmark table (:mod:`lightreasoner.benchmarks`), the prompt and stop strings
(:mod:`lightreasoner.prompts`) have their own homes and are re-exported here; ``lightreasoner grade`` is
:mod:`lightreasoner.grade`.
"""

from ..benchmarks import ALL_BENCHMARKS, FEW_SHOT
from ..benchmarks import PAPER_BENCHMARKS as BENCHMARKS
from ..prompts import BOXED_SYSTEM_PROMPT as SYSTEM_PROMPT
from ..prompts import QWEN25_MATH_COT_TEMPLATE, STOP_STRINGS, build_qwen25_math_prompt
from .equal import _NeedsSymbolic, _defer_symbolic, _isclose, _math_equal, _parse_number, _set_groups, _sets_to_pmatrix
from .extract import (LETTERS, MULTIPLE_CHOICE, SKIP_UNIT, _boxed_content, _first_pass_gold, check_gold_field,
                      _gold_field, _gold_field_text, _gold_passes, _last_choice_letter, _prepare_from_field,
                      _rules_for, choice_answer_clean, clean_completion, extract_answer, extract_prediction,
                      parse_gold, parse_question)
from .golds import GRADERS, StoredGold
from .grade import GradeResult, grade, grade_many
from .normalise import (_PARENTHESISED, _ZERO_DECIMALS_END, _ZERO_DECIMALS_INNER, _brace_frac_shorthands,
                        _cut_trailing_text, _sub_bounded, strip_string)
from .pyexpr import _Refused, _is_safe_python_expression, _parse_expr_names, _parse_python, _safe_names
from .symbolic import (_guard_latex_parsers, _latex2sympy, _parse_symbolic, _safe_number, _sympy_parse_latex,
                       _symbolic_equal)
from .versions import grading_versions
from .worker import (_WORKER, DEFAULT_TIMEOUT, INPROCESS_MAX_CHARS, MAX_TEXT_CHARS, _cheap_verdict, _judge,
                     _serve_symbolic, math_equal)

__all__ = [
    "BENCHMARKS", "ALL_BENCHMARKS", "FEW_SHOT", "STOP_STRINGS", "GradeResult", "GRADERS", "StoredGold",
    "grading_versions",
    "build_qwen25_math_prompt", "parse_question", "parse_gold", "extract_answer", "extract_prediction",
    "strip_string", "choice_answer_clean", "clean_completion", "math_equal", "grade", "grade_many",
    "INPROCESS_MAX_CHARS", "MAX_TEXT_CHARS", "DEFAULT_TIMEOUT",
]
