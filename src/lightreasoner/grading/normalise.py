"""The toolkit's answer normaliser ``strip_string``, step by step, in linear time on any input."""

from __future__ import annotations

import re
from typing import Any

from word2number import w2n

from ..grading_data import UNIT_TEXTS

# Every pattern here runs in linear time on any input (each was checked on 50,000-character adversarial strings):
# the lazy "opener .*? closer" ones are applied through _sub_bounded, the digit ones have a (?<!\d) guard that
# keeps them from retrying inside a digit run, and the toolkit's trailing-text and set patterns are plain functions.
_ARRAY_BEGIN = re.compile(r"\\begin\{array\}\{.*?\}")
_ARRAY_END = re.compile(r"\\end\{array\}")
# (literal text that must occur for the pattern to match, pattern); the unit words are regexes whose only
# metacharacter is "." (the cheap substring test skips most of the ~260 scans on long strings).
_UNIT_PATTERNS = tuple((unit.split(".")[0], re.compile(r"(^|\W)" + unit + r"($|\W)")) for unit in UNIT_TEXTS)
_TEXT_GROUP = re.compile(r"\\text\{(.*?)\}")
_MBOX_GROUP = re.compile(r"\\mbox{.*?}")
_PARENTHESISED = re.compile(r"\(.*?\)")
# The toolkit's (\d+)\.0*([^\d]) and (\d+)\.0*$: a match can only start where a digit run starts (a later start
# in the same run needs the same run end), so the guard changes no match but stops the quadratic retries.
_ZERO_DECIMALS_INNER = re.compile(r"(?<!\d)(\d+)\.0*([^\d])")
_ZERO_DECIMALS_END = re.compile(r"(?<!\d)(\d+)\.0*$")
_SQRT_SHORTHAND = re.compile(r"\\sqrt(\w+)")
_VARIABLE_PREFIXES = ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to")


def _sub_bounded(pattern: re.Pattern, repl: str, text: str, closer: str) -> str:
    """``pattern.sub(repl, text)`` for a lazy ``opener.*?closer`` pattern, in linear time.

    No match can run past the last ``closer`` of its line (``.`` stops at newlines), so each line is cut there and
    only the head is searched: the skipped tail is where every attempt would scan to the line end (quadratic).
    """
    lines = text.split("\n")
    for n, line in enumerate(lines):
        end = line.rfind(closer)
        if end >= 0:
            end += len(closer)
            lines[n] = pattern.sub(repl, line[:end]) + line[end:]
    return "\n".join(lines)


def _cut_trailing_text(s: str) -> str:
    """The toolkit's ``re.sub(r"\\text{.*?}$", "", s)`` for a string without newlines, in linear time: when ``s``
    ends with ``}``, everything from its first ``\\text{`` on goes (the regex retries every ``\\text{`` to the end)."""
    start = s.find("\\text{")
    if start < 0 or not s.endswith("}"):
        return s
    return s[:start]


def _words_to_number(text: str) -> str:
    """word2number's reading of ``text`` (it ignores non-number words: ``"one apple"`` -> ``"1"``), else ``text``."""
    try:
        return str(w2n.word_to_num(text))
    except Exception:
        return text


def _brace_frac_shorthands(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``; a ``\\frac`` with fewer than two
    characters after it leaves the whole string unchanged."""
    head, *parts = s.split("\\frac")
    out = [head]
    for part in parts:
        if part.startswith("{"):
            out.append(part)
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out.append("{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest)
    return "\\frac".join(out)


def _slash_to_frac(s: str) -> str:
    """``a/b`` (exactly one slash, canonical integers, or any side containing ``sqrt``) -> ``\\frac{a}{b}``."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = (p if "sqrt" in p else int(p) for p in parts)
    except ValueError:
        return s
    if s != f"{a}/{b}":
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def strip_string(string: Any, skip_unit: bool = False) -> str:
    """The toolkit's ``strip_string``: 21 ordered normalisation steps (see EVAL_SPEC.md section 6)."""
    s = str(string).strip()
    # 1. newlines, trailing dots
    s = s.replace("\n", "").rstrip(".")
    # 2. \! ; array -> pmatrix ; bmatrix -> pmatrix
    s = s.replace("\\!", "")
    s = _sub_bounded(_ARRAY_BEGIN, r"\\begin{pmatrix}", s, "}")
    s = _ARRAY_END.sub(r"\\end{pmatrix}", s)
    s = s.replace("bmatrix", "pmatrix")
    # 3. tfrac/dfrac -> frac ; relations
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    # 4. \left \right \{ \}
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\{", "{").replace("\\}", "}")
    # 5. a trailing \text{...} (from the first \text{ to a closing brace at the very end), unless that empties it
    cut = _cut_trailing_text(s).strip()
    if cut != "" and cut != s:
        s = cut
    # 6. unit words, two passes over the list, each removal kept only if something remains
    if not skip_unit:
        for _ in range(2):
            for needle, pattern in _UNIT_PATTERNS:
                if needle not in s:
                    continue
                cut = pattern.sub(r"\1\2", s)
                if cut != "":
                    s = cut
    # 7. degrees, dollars, \( \)
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "")
    # 8. number words
    s = _words_to_number(s)
    # 9. \text{X} -> X ; variable prefixes (before spaces are removed)
    s = _sub_bounded(_TEXT_GROUP, r"\1", s, "}")
    for key in _VARIABLE_PREFIXES:
        s = s.replace(key, "")
    # 10. empty set, the real line
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    # 11. percent signs ; " ." and "{." get a leading zero
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    # 12. infinity
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty")  # present in the toolkit; practically never fires
    # 13. "and", \mathbf, \mbox{...}
    s = s.replace("and", "").replace("\\mathbf", "")
    s = _sub_bounded(_MBOX_GROUP, "", s, "}")
    # 14. j -> i when there is no i
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    # 15. zero-only decimal parts
    s = _ZERO_DECIMALS_INNER.sub(r"\1\2", s)
    s = _ZERO_DECIMALS_END.sub(r"\1", s)
    # 16. empty ; leading "."
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    # 17. "k = 5" -> " 5" (one "=", left side of at most two characters)
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    # 18. \sqrt3 -> \sqrt{3}
    s = _SQRT_SHORTHAND.sub(r"\\sqrt{\1}", s)
    # 19. spaces
    s = s.replace(" ", "")
    # 20. \frac shorthands ; 21. a/b
    s = _brace_frac_shorthands(s)
    return _slash_to_frac(s)
