"""Grading hostile and broken input (issue 12): linear-time cleaning, no code path from answer text to ``eval``, a
bound on the whole grading of one answer, and the parser that replaces sympy's ``parse_expr``.

The toolkit's own regular expressions appear here only as the reference the linear rewrites are checked against.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from lightreasoner import grading
from lightreasoner.grade import GradeConfig

# --------------------------------------------------------------------------------------------- linear-time cleaning

_PIECES = ["{", "}", ",", "a", "1", "0", ".", "x", "(", ")", "\n", "\\text{", "\\mbox{", "\\begin{array}{", "\\frac",
           " ", "/", "=", "pmatrix"]


def _random_texts(n: int, seed: int = 0, newlines: bool = True):
    rnd = random.Random(seed)
    pieces = _PIECES if newlines else [p for p in _PIECES if p != "\n"]
    for _ in range(n):
        yield "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 20)))


def test_linear_rewrites_match_the_toolkit_regexes():
    lazy = [(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", "}"), (r"\\text\{(.*?)\}", r"\1", "}"),
            (r"\\mbox{.*?}", "", "}"), (r"\(.*?\)", "", ")")]
    for s in _random_texts(4000):
        assert grading._set_groups(s) == re.findall(r"\{.*,.*\}", s), s
        for pattern, repl, closer in lazy:
            assert grading._sub_bounded(re.compile(pattern), repl, s, closer) == re.sub(pattern, repl, s), s
    for s in _random_texts(4000, seed=1, newlines=False):
        assert grading._cut_trailing_text(s) == re.sub(r"\\text{.*?}$", "", s), s
        assert grading._ZERO_DECIMALS_INNER.sub(r"\1\2", s) == re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s), s
        assert grading._ZERO_DECIMALS_END.sub(r"\1", s) == re.sub(r"(\d+)\.0*$", r"\1", s), s


ADVERSARIAL_50K = {
    "digits": "1" * 50_000, "digits then dot": "1" * 50_000 + ".", "zeros": "1." + "0" * 50_000 + "5",
    "open text": "\\text{" * 8_000, "open mbox": "\\mbox{" * 8_000, "open array": "\\begin{array}{" * 3_500,
    "open parens": "(" * 50_000, "open sets": "{1," * 16_000 + "}", "commas": "1," * 25_000, "fracs": "\\frac" * 10_000,
    "units": " m s t cm kg" * 4_000, "words": "one " * 12_000, "sqrt": "\\sqrt" * 10_000,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_50K))
def test_cleaning_is_linear_on_adversarial_text(name):
    text = ADVERSARIAL_50K[name]
    t0 = time.perf_counter()
    grading.strip_string(text)
    grading.extract_answer(text, "math")
    grading.extract_answer("\\boxed{" + text + "}", "math")
    grading._sets_to_pmatrix(text)
    grading._first_pass_gold("asdiv", {"answer": text})
    assert time.perf_counter() - t0 < 1.0  # the quadratic versions took 6-30 s on these


# --------------------------------------------------------------------------------------------- the parse_expr stand-in

ORDINARY = ["2*x+1", "sqrt(2)/2", "x**2 - 1", "3/4", "1e3", "(1, 2)", "pi/3", "2^3", "0.5", "1.50000000000000000001",
            "-3", "2*pi", "E**2", "I*2", "oo", "-oo", "Abs(x)", "abs(-3)", "max(1,2)", "min(x,y)", "factorial(5)",
            "binomial(5,2)", "[1,2,3]", "{1,2}", "{1:2}", "x<y", "1<2", "x==y", "1<2<3", "x!=y", "f(x)", "g(x,y)+1",
            "sin(pi/6)", "log(8,2)", "exp(1)", "0.2[1]", "0.[3]", "1.2[34]", "3.", ".5", "1_000", "0x10", "True",
            "None", "a_b", "gamma(5)", "~x", "(1)or(2)", "x%3", "7//2", "2**-1", "1/0", "sqrt(-4)", "Rational(1,3)",
            "Matrix([[1,2],[3,4]])", "Interval(0,1)", "functions", "int(x)", "str(x)", "(x,)", "()", "1e-3", "1E5",
            "x*(y+1)", "2*3**2", "(-4,0)", "2*x**2 + sqrt(3)/4 - pi", "x+y*z-w/2"]


@pytest.mark.parametrize("text", ORDINARY)
def test_reader_gives_what_parse_expr_gives(text):
    from sympy.parsing.sympy_parser import parse_expr

    expected = parse_expr(text)  # a fixed, trusted string: the reference the reader must reproduce
    got = grading._parse_python(text)
    assert got == expected and type(got) is type(expected) and str(got) == str(expected)


def test_reader_resolves_names_as_parse_expr_does():
    import sympy
    from sympy.parsing.sympy_parser import auto_symbol

    namespace: dict = {}
    exec("from sympy import *", namespace)  # parse_expr's own namespace, built the way it builds it
    namespace.update(max=sympy.Max, min=sympy.Min)
    for name, obj in grading._safe_names().items():
        if name in namespace:
            assert namespace[name] is obj, name
    kept = {n for n in namespace if auto_symbol([(1, n)], {}, namespace)[0] == (1, n)}
    assert grading._parse_expr_names() >= kept - set(__builtins__ if isinstance(__builtins__, dict) else ())


HOSTILE = [
    "__import__('os').system('true')", "open('x','w')", "().__class__.__bases__[0].__subclasses__()",
    "eval('1')", "exec('1')", "S(srepr(x))", "sympify(srepr(x))", "parse_expr(sstr(x))", "lambda: 1",
    "[c for c in (1,)]", "x.y", "x[0]", "x[1:2]", "sstr(x)[0]", "srepr(x)", "latex(x)+pretty(x)", "getattr(x, y)",
    "Symbol(sstr(x))", "f(*x)", "f(x=1)", "{**x}", "1 if x else 2", "(y:=1)", "b'1'", "f'{x}'", "...", "2j", "N(x)",
    "Function(x)", "lambdify(x, x)", "var(x)", "preview(x)", "S", "x!",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_reader_refuses_everything_else(text):
    assert not grading._is_safe_python_expression(text)
    with pytest.raises(grading._Refused):
        grading._parse_python(text)


def _payload(word: str) -> str:
    """``~S("__import__('os').system('touch /tmp/<word>')")`` spelled only with names, sympy's printers, slices,
    ``+`` and one float: every token passed the old "safe expression" check, and the LaTeX parser refuses ``~``,
    so parse_expr got it, and ``S`` (sympify) ran the assembled string."""
    underscore, quote = "sstr(xq_yq)[2:3]", "srepr(xq)[7:8]"
    opening, closing = "srepr(xq)[6:7]", "srepr(xq)[11:12]"
    dot, space, slash = "sstr(1.5)[1:2]", "sstr(xq+yq)[2:3]", "sstr(xq/yq)[2:3]"
    parts = [underscore, underscore, "sstr(imports)[0:6]", underscore, underscore, opening, quote, "sstr(xos)[1:3]",
             quote, closing, dot, "sstr(system)", opening, quote, "sstr(touch)", space, slash, "sstr(tmp)", slash,
             f"sstr({word})", quote, closing]
    return "~S(" + "+".join(parts) + ")"


def test_the_payload_really_assembles_code():
    from sympy.parsing.sympy_parser import parse_expr

    inner = _payload("pwnedcheck")[3:-1]  # without ~S(...): only printers run, nothing is executed
    assert parse_expr(inner) == "__import__('os').system('touch /tmp/pwnedcheck')"


def _sympy_internal(stack) -> bool:
    """Whether a call comes from sympy itself on text it made: ``nsimplify`` sympifies the formula
    ``mpmath.identify`` writes for a float (digits, operators and constant names; e.g. inside ``Expr.equals``,
    which samples random numbers), and ``sympy.polys`` execs its monomial templates."""
    return any(frame.name in ("nsimplify_real", "_build") and "sympy" in frame.filename for frame in stack)


@pytest.fixture
def no_code_from_text(monkeypatch):
    """Record every eval/exec, every parse_expr and every sympify of a string made from anything but sympy's own
    text (see :func:`_sympy_internal`) while the fixture is active."""
    import builtins
    import sys
    import traceback

    import sympy
    import sympy.parsing.sympy_parser as sympy_parser

    grading._symbolic_equal("\\frac{1}{2}", "0.5")  # imports and the parser guard, before recording
    calls: list[tuple[str, object]] = []

    def recording(name, original, strings_only=False):
        def call(*args, **kwargs):
            if (not strings_only or (args and isinstance(args[0], str))) and not isinstance(
                    args[0] if args else None, type(compile("0", "", "eval"))) \
                    and not _sympy_internal(traceback.extract_stack()):
                calls.append((name, args[0] if args else None))
            return original(*args, **kwargs)
        return call

    monkeypatch.setattr(builtins, "eval", recording("eval", builtins.eval))
    monkeypatch.setattr(builtins, "exec", recording("exec", builtins.exec))
    monkeypatch.setattr(sympy_parser, "parse_expr", recording("parse_expr", sympy_parser.parse_expr))
    monkeypatch.setattr(sympy, "sympify", recording("sympify", sympy.sympify, True))
    sympify_module = sys.modules["sympy.core.sympify"]
    monkeypatch.setattr(sympify_module, "sympify", recording("sympify", sympify_module.sympify, True))
    return calls


def test_no_answer_text_reaches_eval(no_code_from_text):
    answers = HOSTILE + [_payload("pwnedrecord"), "\\frac{1}{2}", "1,234.5", "50\\%", "2.5E-3", "\\frac12", "x^2+1",
                         "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "(1,2)", "0.2[1]", "sqrt(2)/2", "12\\%", "x=1"]
    for answer in answers:
        grading._parse_symbolic(answer)
        grading._symbolic_equal(answer, "2")
    assert no_code_from_text == []


def test_the_latex_parsers_build_numbers_without_sympify(no_code_from_text):
    import sympy
    from sympy.parsing.latex import _parse_latex_antlr

    expected = {"1.5": sympy.Float("1.5"), "12": sympy.Integer(12), "1e5": sympy.Float("1e5"), "3": sympy.Integer(3),
                "-1234.5": sympy.Float("-1234.5"), "0.50": sympy.Float("0.50"), "inf": sympy.oo}
    for text, number in expected.items():  # what sympy.Number(text) gives, via sympify
        got = _parse_latex_antlr.sympy.Number(text)
        assert got == number and type(got) is type(number)
    assert isinstance(sympy.Integer(3), _parse_latex_antlr.sympy.Number)
    assert float(grading._sympy_parse_latex("\\frac{3}{4}+0.25")) == 1.0
    assert grading._latex2sympy("1,234.5") == sympy.Float("1234.5")
    assert grading._latex2sympy("12\\%").doit() == sympy.Rational(12, 100)
    assert not [c for c in no_code_from_text if c[0] in ("parse_expr", "sympify", "eval")]
    with pytest.raises(ValueError):
        _parse_latex_antlr.sympy.Number("__import__('os')")


def test_a_string_side_is_only_compared_as_a_string(no_code_from_text):
    unparseable = "\\frac{"  # every parser refuses it
    assert grading._parse_symbolic(unparseable) == unparseable
    assert grading._symbolic_equal(unparseable, unparseable)
    assert not grading._symbolic_equal(unparseable, "2")
    assert not no_code_from_text


def test_hostile_boxed_answer_runs_nothing_end_to_end(tmp_path):
    marker = Path("/tmp") / ("pwned" + "".join(random.Random().choice("qxzvw") for _ in range(10)))
    try:
        for completion in (f"So \\boxed{{{_payload(marker.name)}}}", f"The answer is {_payload(marker.name)}"):
            res = grading.grade("math", {"problem": "", "solution": "\\boxed{2}"}, completion, timeout=3.0)
            assert not res.correct
        assert not grading.math_equal(_payload(marker.name), "2")
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- bounded grading

MATH_ROW = {"problem": "Compute it.", "solution": "So it is $\\boxed{2}$."}
ONE_MB = {
    "boxed digits": "\\boxed{" + "1" * 1_000_000 + "}", "digits": "1" * 1_000_000, "text": "\\text{" * 170_000,
    "nested braces": "\\boxed{" + "{" * 500_000 + "1" + "}" * 500_000 + "}",
}


@pytest.mark.parametrize("name", sorted(ONE_MB))
def test_a_megabyte_answer_is_wrong_at_once_with_the_reason(name):
    t0 = time.perf_counter()
    res = grading.grade("math", MATH_ROW, ONE_MB[name], timeout=1.0)
    assert time.perf_counter() - t0 < 4.0
    assert not res.correct and res.error and "too long" in res.error and str(len(ONE_MB[name])) in res.error


def test_long_answers_are_graded_whole_in_the_worker_under_the_timeout():
    grading.math_equal("x", "y")  # the worker is up: its start-up is not part of a timeout
    padding = "We keep thinking. " * 2_000  # 36,000 characters: past INPROCESS_MAX_CHARS
    assert len(padding) > grading.INPROCESS_MAX_CHARS
    res = grading.grade("math", MATH_ROW, padding + "So \\boxed{\\frac{4}{2}}.", timeout=3.0)
    assert res.correct and res.pred == "\\frac{4}{2}" and res.gold == "2" and res.error is None
    slow = "\\boxed{" + "\\text{" * 50_000 + "}"  # 300 kB: the symbolic step alone runs far past 1 s
    t0 = time.perf_counter()
    res = grading.grade("math", MATH_ROW, slow, timeout=1.0)
    assert time.perf_counter() - t0 < 4.0
    assert not res.correct and res.error.startswith("timeout: grading this answer (300008 characters)")


def test_long_texts_given_to_math_equal_are_bounded_too():
    t0 = time.perf_counter()
    assert not grading.math_equal("(" * 30_000 + "1" + ")" * 30_000, "2", timeout=1.0)
    assert not grading._judge("1" * 500_000, "2", 1.0)[0]
    assert "too long" in grading._judge("1" * 500_000, "2", 1.0)[1]
    assert time.perf_counter() - t0 < 6.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0])
def test_timeout_must_be_finite_and_positive(bad, tmp_path):
    problems = GradeConfig(benchmark="math", input=str(tmp_path / "a"), output=str(tmp_path / "b"),
                                   grade_timeout=bad).validate()
    assert f"--grade-timeout must be a finite number > 0, got {bad}" in problems
    with pytest.raises(ValueError, match="finite number > 0"):
        grading.grade_many("math", [MATH_ROW], ["\\boxed{2}"], timeout=bad)
    with pytest.raises(ValueError, match="finite number > 0"):
        grading.math_equal("2", "2", timeout=bad)


def test_cli_refuses_a_nan_timeout_by_name(tmp_path, capsys):
    from lightreasoner.cli import main

    args = ["grade", "--benchmark", "math", "--input", str(tmp_path / "in.jsonl"), "--output",
            str(tmp_path / "out.jsonl"), "--grade-timeout", "nan"]
    assert main(args) == 2
    err = capsys.readouterr().err  # the option parser or GradeConfig.validate refuses it, naming the option
    assert "--grade-timeout must be a finite number" in err and "nan" in err
