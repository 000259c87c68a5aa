"""The toolkit's ``symbolic_equal``: its three parsers (sympy's LaTeX parser, ``parse_expr``, latex2sympy) and its
checks, with no path from answer text to ``eval`` (runs only in the worker process)."""

from __future__ import annotations

import functools
from typing import Any

from .equal import _isclose
from .pyexpr import _parse_python

def _safe_number(*obj: Any) -> Any:
    """``sympy.Number(*obj)``, except that a string is read by :func:`_parse_python` (with sympify's ``^`` -> ``**``)
    instead of ``sympify``, which ``eval``-s. Same results for every string the reader reads; the others raise."""
    from sympy import Number

    if len(obj) != 1 or not isinstance(obj[0], str) or obj[0].lower() in ("nan", "inf", "+inf", "-inf"):
        return Number(*obj)
    value = _parse_python(obj[0].replace("\n", "").replace("^", "**"))
    if not isinstance(value, Number):
        raise ValueError(f'String "{obj[0]}" does not denote a Number')
    return value


class _SafeNumberType(type):
    """Metaclass of :class:`_SafeNumber`: calls go to :func:`_safe_number`, type checks to ``sympy.Number``."""

    def __call__(cls, *obj: Any) -> Any:
        return _safe_number(*obj)

    def __instancecheck__(cls, value: Any) -> bool:
        from sympy import Number

        return isinstance(value, Number)

    def __subclasscheck__(cls, sub: type) -> bool:
        from sympy import Number

        return issubclass(sub, Number)


class _SafeNumber(metaclass=_SafeNumberType):
    """Stands in for ``sympy.Number`` inside the LaTeX parsers (see :func:`_guard_latex_parsers`)."""


class _SympyWithSafeNumber:
    """The ``sympy`` module as the LaTeX parsers see it: every attribute is sympy's, but ``Number`` is
    :class:`_SafeNumber`."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return _SafeNumber if name == "Number" else getattr(self._module, name)


@functools.lru_cache(maxsize=None)
def _guard_latex_parsers() -> None:
    """Close the one path from LaTeX text to ``eval`` inside the two LaTeX parsers (installed once per process).

    sympy's ``_parse_latex_antlr`` (``convert_number``, ``convert_frac``'s ``\\\\frac12`` digits) and
    latex2sympy2_extended (``parse_number`` for numbers, percentages and E-notation, and ``convert_number`` for a
    whole input like ``1,234.5``) build numbers with ``sympy.Number(token_text)``, and ``Number`` of a string calls
    ``sympify``, i.e. ``parse_expr``, i.e. ``eval``. The lexers only let digits, separators and exponents into those
    tokens, but the text is still the model's, so both modules get a ``sympy`` (and latex2sympy2 a ``Number``) whose
    ``Number`` reads strings with :func:`_parse_python`. Nothing else in either module turns input text into
    objects other than through antlr, ``Symbol``/``Function`` names, ``Rational``/``Integer`` of Python numbers
    and their own recursive parse; latex2sympy2's ``parse_expr`` call only reads ``variable_values``, which we never
    pass.
    """
    import sympy
    from latex2sympy2_extended import latex2sympy2
    from sympy.parsing.latex import _parse_latex_antlr

    view = _SympyWithSafeNumber(sympy)
    _parse_latex_antlr.sympy = view
    latex2sympy2.sympy = view
    latex2sympy2.Number = _SafeNumber


@functools.lru_cache(maxsize=None)
def _antlr_is_411() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("antlr4-python3-runtime").startswith("4.11")
    except PackageNotFoundError:
        return False


def _sympy_parse_latex(text: str):
    """sympy's ``parse_latex`` (non-strict). With an antlr runtime other than 4.11 (sympy refuses it by version
    string) the same generated parser is driven directly, which the 4.x runtime runs unchanged."""
    _guard_latex_parsers()
    if _antlr_is_411():
        from sympy.parsing.latex import parse_latex

        return parse_latex(text)
    import antlr4
    from sympy.parsing.latex import _parse_latex_antlr as impl

    if impl.LaTeXParser is None or impl.MathErrorListener is None:
        raise ImportError("sympy's LaTeX parser is unavailable")
    text = text.strip()
    listener = impl.MathErrorListener(text)
    lexer = impl.LaTeXLexer(antlr4.InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = impl.LaTeXParser(antlr4.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    return impl.convert_relation(parser.math().relation())


def _latex2sympy(text: str):
    _guard_latex_parsers()
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy

    # No math-verify normalisation; no mixed fractions or lower-casing (closer to the toolkit's latex2sympy2 1.9).
    config = ConversionConfig(interpret_as_mixed_fractions=False, lowercase_symbols=False)
    return latex2sympy(text, normalization_config=None, conversion_config=config)


def _parse_symbolic(text: str):
    """First parser that succeeds (each tried with ``\\\\\\\\`` -> ``\\\\`` first, then on the raw text), else the text.

    The toolkit's chain is parse_latex, parse_expr, latex2sympy; :func:`_parse_python` stands in for parse_expr.
    A parser's result is never a Python string (a string result would count as a failure)."""
    for parse in (_sympy_parse_latex, _parse_python, _latex2sympy):
        for candidate in (text.replace("\\\\", "\\"), text):
            try:
                value = parse(candidate)
            except Exception:
                continue
            if not isinstance(value, str):
                return value
    return text


def _symbolic_equal(a: str, b: str) -> bool:
    """The toolkit's ``symbolic_equal``. A side no parser understood stays a string; the toolkit would then hand it
    to sympify (``a.equals(b)``, ``N(b)``: ``eval``), so with a string side only the string forms are compared.
    No sympy call below ever receives a Python string. (sympy still sympifies text of its own making: inside
    ``equals``/``simplify``, ``nsimplify`` reads the formula ``mpmath.identify`` writes for a float, made of
    digits, operators and constant names, never of answer text.)"""
    from sympy import N, simplify

    a, b = _parse_symbolic(a), _parse_symbolic(b)
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    try:
        if str(a) == str(b) or a == b:
            return True
    except Exception:
        pass
    try:
        if a.equals(b) or simplify(a - b) == 0:
            return True
    except Exception:
        pass
    try:
        if abs(a.lhs - a.rhs).equals(abs(b.lhs - b.rhs)):
            return True
    except Exception:
        pass
    try:
        if _isclose(float(N(a)), float(N(b))):
            return True
    except Exception:
        pass
    try:
        if a.shape == b.shape:
            if a.applyfunc(lambda x: round(x, 3)).equals(b.applyfunc(lambda x: round(x, 3))):
                return True
    except Exception:
        pass
    return False
