"""Python-syntax answers read without ``eval``: a whitelisted walk over their ``ast`` that builds what sympy's
``parse_expr`` would (the toolkit's second parser), refusing everything else."""

from __future__ import annotations

import ast
import functools
import operator
import re
from typing import Any, Callable

# Python-syntax answers are read by a whitelisted walk over their ``ast`` (never ``eval``), in place of sympy's
# ``parse_expr``. The result is the object ``parse_expr(text)`` (standard transformations, evaluate=True) gives:
# numbers become Integer / Float-from-source-text, names on the list below become those sympy objects, any other
# name a Symbol (or, called directly, an undefined Function), and operators apply Python's operators to them.
# Everything else is refused, and the next parser is tried, as when parse_expr raised.

_SAFE_SYMPY_NAMES = (
    # constants
    "pi", "E", "I", "oo", "zoo", "nan", "EulerGamma", "GoldenRatio", "Catalan", "true", "false",
    # elementary and special functions
    "sqrt", "cbrt", "root", "real_root", "exp", "log", "ln", "sin", "cos", "tan", "cot", "sec", "csc", "asin",
    "acos", "atan", "acot", "asec", "acsc", "atan2", "sinh", "cosh", "tanh", "coth", "sech", "csch", "asinh",
    "acosh", "atanh", "acoth", "asech", "acsch", "Abs", "sign", "floor", "ceiling", "frac", "re", "im", "arg",
    "conjugate", "factorial", "factorial2", "binomial", "gamma", "beta", "zeta", "erf", "erfc", "gcd", "lcm",
    "Max", "Min", "Mod", "fibonacci", "catalan", "harmonic",
    # numbers, relations, sets, containers, calculus
    "Rational", "Integer", "Float", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Interval", "FiniteSet", "Union",
    "Intersection", "Complement", "Tuple", "Matrix", "Sum", "Product", "Integral", "Derivative", "Limit", "diff",
    "integrate", "limit",
)
_SAFE_BUILTIN_NAMES = ("abs", "round", "pow", "sum")  # parse_expr's namespace also maps max, min to Max, Min

_BINARY_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.MatMult: operator.matmul,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Invert: operator.invert, ast.Not: operator.not_}
_COMPARE_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge}
_ALLOWED_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.And,
                  ast.Or, ast.Compare, ast.Call, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Subscript,
                  *_BINARY_OPS, *_UNARY_OPS, *_COMPARE_OPS)
# parse_expr's repeated-decimal notation 0.1[6] = 0.1666...: a decimal literal directly indexed by a digit literal
_REPEATED_DECIMAL = re.compile(r"([\d_]*)\.([\d_]*)\s*\[\s*([\d_]+)\s*\]")


class _Refused(ValueError):
    """The text holds something the whitelisted reader does not build (the next parser is tried instead)."""


@functools.lru_cache(maxsize=None)
def _parse_expr_names() -> frozenset[str]:
    """The names sympy's ``parse_expr`` resolves to objects instead of symbols: its namespace (``from sympy import
    *``, the builtin functions, ``max``/``min``) less what its ``auto_symbol`` still makes a Symbol."""
    import builtins
    import types

    import sympy
    from sympy.assumptions.ask import AssumptionKeys

    namespace = {name: getattr(sympy, name) for name in sympy.__all__}
    namespace.update((n, v) for n, v in vars(builtins).items() if isinstance(v, types.BuiltinFunctionType))
    return frozenset({"max", "min"} | {n for n, v in namespace.items()
                                       if isinstance(v, (AssumptionKeys, sympy.Basic, type)) or callable(v)})


@functools.lru_cache(maxsize=None)
def _safe_names() -> dict[str, Any]:
    """name -> the object ``parse_expr`` resolves it to, for the whitelisted names only."""
    import builtins

    import sympy

    table = {name: getattr(sympy, name) for name in _SAFE_SYMPY_NAMES}
    table.update((name, getattr(builtins, name)) for name in _SAFE_BUILTIN_NAMES)
    table.update(max=sympy.Max, min=sympy.Min)
    return table


class _Source:
    """The text being read, for the source of a node (``ast`` offsets count UTF-8 bytes within a line)."""

    def __init__(self, text: str) -> None:
        self.lines = [line.encode("utf-8") for line in re.split(r"\r\n|\r|\n", text)]

    def segment(self, node: ast.expr) -> str:
        if node.lineno != node.end_lineno:
            raise _Refused("a token spanning lines")
        return self.lines[node.lineno - 1][node.col_offset:node.end_col_offset].decode("utf-8")

    def followed_by_paren(self, node: ast.expr) -> bool:
        """Whether the next token after ``node`` on its line is ``(`` (parse_expr then reads a name as a function)."""
        return self.lines[node.end_lineno - 1][node.end_col_offset:].lstrip(b" \t\x0c").startswith(b"(")


def _repeated_decimal_parts(node: ast.Subscript, source: _Source) -> tuple[str, str, str] | None:
    """(integer part, decimals, repetend) when ``node`` is written like ``0.1[6]``, else ``None``."""
    if not (isinstance(node.value, ast.Constant) and type(node.value.value) is float
            and isinstance(node.slice, ast.Constant) and type(node.slice.value) is int):
        return None
    match = _REPEATED_DECIMAL.fullmatch(source.segment(node))
    return match.groups() if match else None


def _check_python_tree(tree: ast.Expression, source: _Source) -> None:
    """Raise :class:`_Refused` unless every node of ``tree`` is one the reader builds: numbers, names (a
    non-sympy-object callable only where it is called), operators, comparisons, calls by name with positional
    arguments, tuples, lists, sets, dicts and repeated decimals. No attribute, string, lambda, comprehension,
    keyword argument, star, slice or other subscript, conditional or assignment gets through."""
    resolved, safe = _parse_expr_names(), _safe_names()
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise _Refused(f"{type(node).__name__} is not read")
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool, type(None)):
            raise _Refused(f"a {type(node.value).__name__} constant is not read")
        elif isinstance(node, ast.Name):
            if node.id in resolved and node.id not in safe:
                raise _Refused(f"{node.id!r} is not a whitelisted name")
            if node.id in safe and callable(safe[node.id]) and not _is_sympy_object(safe[node.id]) \
                    and id(node) not in called:
                raise _Refused(f"{node.id!r} is only read when called")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.keywords:
                raise _Refused("only calls of a name with positional arguments are read")
        elif isinstance(node, ast.Dict) and any(key is None for key in node.keys):
            raise _Refused("dict unpacking is not read")
        elif isinstance(node, ast.Subscript) and _repeated_decimal_parts(node, source) is None:
            raise _Refused("subscripts are not read (other than repeated decimals like 0.1[6])")


def _is_sympy_object(value: Any) -> bool:
    from sympy import Basic
    from sympy.matrices import MatrixBase

    return isinstance(value, (Basic, MatrixBase))


def _build_number(node: ast.Constant, source: _Source) -> Any:
    """parse_expr's ``auto_number``: an int literal -> Integer, a float literal -> Float of its source text;
    True/False/None stay Python values."""
    from sympy import Float, Integer

    if type(node.value) is int:
        return Integer(node.value)
    if type(node.value) is float:
        return Float(source.segment(node))
    return node.value


def _build_repeated_decimal(node: ast.Subscript, source: _Source) -> Any:
    """parse_expr's ``repeated_decimals``: ``a.b[r]`` = a + b/10^len(b) + r/(9...9 0...0)."""
    from sympy import Integer, Rational

    whole, decimals, repetend = (part.replace("_", "") for part in _repeated_decimal_parts(node, source))
    if not repetend.lstrip("0"):
        raise _Refused("an all-zero repetend")  # parse_expr's rewrite is a syntax error there
    zeros = "0" * len(decimals)
    return (Integer(int(whole or "0")) + Rational(int(decimals or "0"), int("1" + zeros))
            + Rational(int(repetend), int("9" * len(repetend) + zeros)))


def _build_callee(node: ast.Call, source: _Source) -> Any:
    """The object a called name stands for: a whitelisted one, or (parse_expr's ``auto_symbol``) an undefined
    Function when the name is directly followed by ``(``, else a Symbol (which cannot be called)."""
    from sympy import Function, Symbol

    name = node.func.id
    safe = _safe_names()
    if name in safe:
        return safe[name]
    return Function(name) if source.followed_by_paren(node.func) else Symbol(name)


def _build_compare(node: ast.Compare, source: _Source) -> Any:
    """Python's chained comparison (``a < b < c`` is ``a < b and b < c``) on the built values."""
    left = _build_python(node.left, source)
    result: Any = True
    for op, comparator in zip(node.ops, node.comparators):
        right = _build_python(comparator, source)
        result = _COMPARE_OPS[type(op)](left, right)
        if len(node.ops) > 1 and not result:
            return result
        left = right
    return result


def _build_bool_op(node: ast.BoolOp, source: _Source) -> Any:
    """Python's ``and`` / ``or`` (short-circuit, returning an operand)."""
    value: Any = None
    for operand in node.values:
        value = _build_python(operand, source)
        if bool(value) == isinstance(node.op, ast.Or):
            return value
    return value


def _build_python(node: ast.AST, source: _Source) -> Any:
    """The value of a node of a tree that passed :func:`_check_python_tree`."""
    if isinstance(node, ast.Expression):
        return _build_python(node.body, source)
    if isinstance(node, ast.Constant):
        return _build_number(node, source)
    if isinstance(node, ast.Name):
        safe = _safe_names()
        if node.id in safe:
            return safe[node.id]
        from sympy import Symbol

        return Symbol(node.id)
    if isinstance(node, ast.BinOp):
        return _BINARY_OPS[type(node.op)](_build_python(node.left, source), _build_python(node.right, source))
    if isinstance(node, ast.UnaryOp):
        return _UNARY_OPS[type(node.op)](_build_python(node.operand, source))
    if isinstance(node, ast.BoolOp):
        return _build_bool_op(node, source)
    if isinstance(node, ast.Compare):
        return _build_compare(node, source)
    if isinstance(node, ast.Call):
        function = _build_callee(node, source)
        value = function(*[_build_python(arg, source) for arg in node.args])
        if isinstance(value, (str, bytes)):
            raise _Refused("a call gave a string")
        return value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_build_python(e, source) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        return {_build_python(k, source): _build_python(v, source) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Subscript):
        return _build_repeated_decimal(node, source)
    raise _Refused(f"{type(node).__name__} is not read")  # pragma: no cover - _check_python_tree refuses it first


def _read_python_tree(text: str) -> tuple[ast.Expression, _Source]:
    """The checked ``ast`` of ``text`` (stripped, as parse_expr does) and its source; raises on anything else."""
    text = text.strip()
    if "!" in text.replace("!=", ""):
        raise _Refused("factorial notation is not read")  # parse_expr's "5!"; the LaTeX parsers read it
    source = _Source(text)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise _Refused(f"not a Python expression ({type(e).__name__})") from None
    _check_python_tree(tree, source)
    return tree, source


def _parse_python(text: str) -> Any:
    """``parse_expr(text)`` without ``eval``: the whitelisted reading of a Python-syntax answer (see above).

    Raises :class:`_Refused` (or whatever sympy raises while building) where ``parse_expr`` would have been asked
    for anything outside the whitelist; the result holds no Python string anywhere.
    """
    tree, source = _read_python_tree(text)
    return _build_python(tree, source)


def _is_safe_python_expression(text: str) -> bool:
    """Whether ``text`` passes the reader's whitelist (a static check: nothing is built)."""
    try:
        _read_python_tree(text)
    except _Refused:
        return False
    return True
