"""The `calculator` tool: exact arithmetic on a parsed expression, never `eval`.

`evaluate("37×43")` returns `"1591"`; `evaluate("1/3")` returns `"0.333333333333… (1/3)"`. Bad input raises
`ToolError` with a message that says what is wrong, which the tool loop hands to the model as the result.

Notable choices:
- The expression is parsed by Python's own parser (`ast.parse(mode="eval")`) and only these nodes are
  walked: number literals (int, float, scientific notation; no complex), `+ - * / // % **`, unary `+ -`
  and parentheses. Anything else (names, calls, attributes, strings, comparisons) is refused by name.
- Exact: every value is a `fractions.Fraction`, and a decimal literal is read from its source text
  (`0.1` is 1/10, not the float nearest it). A fractional power is taken only when its result is
  rational (`4 ** 0.5` is 2); an irrational one is refused rather than approximated.
- Hostile input fails fast, before any big number exists: at most `MAX_CHARS` characters and `MAX_NODES`
  syntax nodes (Python's parser refuses nesting deeper than 200 parentheses itself), literals of at most
  `MAX_DIGITS` digits and exponents within ±`MAX_DIGITS`, and every product and power is sized by bit
  lengths first and refused when its result would exceed `MAX_BITS` (about 3,000 decimal digits), so
  `9**9**9` is an error at once, not a hang.
- Before parsing, the text is normalised: NFKC (full-width digits and `＋－＊／（）％` become ASCII), `×` `·`
  `⋅` `✕` are `*`, `÷` `∶` are `/`, `−` (minus sign) is `-`, `^` is `**`, thousands separators in
  numbers are not accepted (a comma is an error), and a trailing `=` or `?` is dropped.
- Results: an integer exactly; a terminating fraction as its exact decimal when it has at most
  `MAX_DECIMALS` significant digits; otherwise a decimal of `SHOWN_DIGITS` significant digits with `…`,
  followed by the exact fraction in parentheses.
"""
from __future__ import annotations

import ast
import re
import unicodedata
from decimal import Context, Decimal, InvalidOperation
from fractions import Fraction

from .errors import ToolError

NAME = "calculator"
DESCRIPTION = ("Exact arithmetic. Give one expression with numbers, + - * / // % ** (or ^), parentheses; "
               "× and ÷ work too. Returns the exact result.")
PARAMETERS = {
    "type": "object",
    "properties": {"expression": {"type": "string", "description": "the arithmetic expression, e.g. (2+3)*4",
                                  "maxLength": 1000}},
    "required": ["expression"],
    "additionalProperties": False,
}

MAX_CHARS = 1000
MAX_NODES = 400
MAX_DIGITS = 1000
MAX_BITS = 10_000
MAX_DECIMALS = 40
SHOWN_DIGITS = 12
MAX_ROOT = 64  # largest root taken for a fractional power (x ** (1/n))

_REPLACE = {"×": "*", "✕": "*", "·": "*", "⋅": "*", "∗": "*", "÷": "/", "∶": "/", "−": "-", "–": "-",
            "^": "**"}
_REPLACE_RE = re.compile("|".join(re.escape(k) for k in _REPLACE))
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
           ast.Pow: "**"}


def normalise(expression: str) -> str:
    """The expression in ASCII operator syntax (see the module notes)."""
    text = unicodedata.normalize("NFKC", expression)
    text = _REPLACE_RE.sub(lambda m: _REPLACE[m.group(0)], text).strip()
    return text.rstrip("=?").strip()


def _bits(q: Fraction) -> int:
    return max(q.numerator.bit_length(), q.denominator.bit_length())


def _check_size(q: Fraction) -> Fraction:
    if _bits(q) > MAX_BITS:
        raise ToolError(f"the result is too large (over {MAX_BITS} bits); the calculator keeps numbers exact "
                        f"and bounded")
    return q


def _literal(node: ast.Constant, source: str) -> Fraction:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a complex number" if isinstance(value, complex) else f"the {type(value).__name__} {value!r}"[:80]
        raise ToolError(f"only real numbers are allowed, not {kind}")
    if isinstance(value, int):
        if value.bit_length() > MAX_BITS:
            raise ToolError(f"a number has more than {MAX_DIGITS} digits")
        return Fraction(value)
    text = (ast.get_source_segment(source, node) or repr(value)).replace("_", "")
    try:
        dec = Decimal(text)
    except InvalidOperation:
        dec = Decimal(repr(value))
    if not dec.is_finite():
        raise ToolError(f"the number {text[:40]} is not finite")
    digits = len(dec.as_tuple().digits)
    if digits > MAX_DIGITS or abs(dec.adjusted()) > MAX_DIGITS:
        raise ToolError(f"the number {text[:40]} has more than {MAX_DIGITS} digits or an exponent beyond "
                        f"±{MAX_DIGITS}")
    return Fraction(dec)


def _root(x: int, n: int) -> int | None:
    """The exact n-th root of x >= 0, or None."""
    if x < 2:
        return x
    lo, hi = 0, 1 << (x.bit_length() // n + 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid ** n <= x:
            lo = mid
        else:
            hi = mid - 1
    return lo if lo ** n == x else None


def _power(base: Fraction, exp: Fraction) -> Fraction:
    if exp.denominator != 1:
        n = exp.denominator
        if n > MAX_ROOT:
            raise ToolError(f"a fractional power with denominator {n} is beyond the calculator (at most "
                            f"{MAX_ROOT})")
        if base < 0:
            raise ToolError("a fractional power of a negative number is not a real number")
        num, den = _root(base.numerator, n), _root(base.denominator, n)
        if num is None or den is None:
            raise ToolError(f"the result is irrational ({base} ** {exp}); the calculator gives exact results only")
        base, exp = Fraction(num, den), Fraction(exp.numerator)
    e = exp.numerator
    if base == 0 and e < 0:
        raise ToolError("division by zero (0 to a negative power)")
    if base in (0, 1) or e == 0:
        return base ** e if e else Fraction(1)
    if base == -1:
        return Fraction(-1 if e % 2 else 1)
    if abs(e) > MAX_BITS or (_bits(base) - 1) * abs(e) > MAX_BITS:  # sized before it is computed
        raise ToolError(f"the result is too large (over {MAX_BITS} bits); the calculator keeps numbers exact "
                        f"and bounded")
    return _check_size(base ** e)


def _apply(op: type, a: Fraction, b: Fraction) -> Fraction:
    if op is ast.Add:
        return _check_size(a + b)
    if op is ast.Sub:
        return _check_size(a - b)
    if op is ast.Mult:  # both operands are within MAX_BITS, so the product is cheap to compute and check
        return _check_size(a * b)
    if op is ast.Pow:
        return _power(a, b)
    if b == 0:
        raise ToolError("division by zero")
    if op is ast.Div:
        return _check_size(a / b)
    if op is ast.FloorDiv:
        return Fraction(a // b)
    return _check_size(a % b)


def _walk(node: ast.AST, source: str) -> Fraction:
    # iterative post-order walk: no recursion, whatever the nesting
    stack: list = [(node, False)]
    values: list[Fraction] = []
    while stack:
        n, done = stack.pop()
        if isinstance(n, ast.Constant):
            values.append(_literal(n, source))
        elif isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            if done:
                values.append(-values.pop() if isinstance(n.op, ast.USub) else values.pop())
            else:
                stack += [(n, True), (n.operand, False)]
        elif isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            if done:
                b, a = values.pop(), values.pop()
                values.append(_apply(type(n.op), a, b))
            else:
                stack += [(n, True), (n.right, False), (n.left, False)]
        else:
            raise ToolError(f"not arithmetic: {_describe(n, source)} (use numbers, + - * / // % ** and "
                            f"parentheses)")
    return values[0]


def _describe(node: ast.AST, source: str) -> str:
    if isinstance(node, (ast.UnaryOp, ast.BinOp)):
        return f"the operator in {(ast.get_source_segment(source, node) or '')[:40]!r}"
    seg = ast.get_source_segment(source, node)
    return f"{type(node).__name__.lower()} {seg[:40]!r}" if seg else type(node).__name__.lower()


def format_result(q: Fraction) -> str:
    """An integer exactly; a terminating fraction as its exact decimal when short; otherwise a rounded
    decimal with `…` and the exact fraction."""
    if q.denominator == 1:
        return str(q.numerator)
    d = q.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # terminating
        exact = Context(prec=MAX_DECIMALS + 1).divide(Decimal(q.numerator), Decimal(q.denominator))
        if len(exact.as_tuple().digits) <= MAX_DECIMALS:
            return _plain(exact)
    shown = Context(prec=SHOWN_DIGITS).divide(Decimal(q.numerator), Decimal(q.denominator))
    return f"{_plain(shown)}… ({q.numerator}/{q.denominator})"


def _plain(d: Decimal) -> str:
    """A decimal without exponent notation when it is of a reasonable size, else in scientific notation."""
    if -30 <= d.adjusted() <= 30:
        text = format(d, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return format(d.normalize(), "E")


def evaluate(expression: str) -> str:
    """The exact value of an arithmetic expression, as text; `ToolError` says what is wrong otherwise."""
    if not isinstance(expression, str):
        raise ToolError("the expression must be a string")
    if len(expression) > MAX_CHARS:
        raise ToolError(f"the expression is longer than {MAX_CHARS} characters")
    source = normalise(expression)
    if not source:
        raise ToolError("the expression is empty")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise ToolError(f"cannot parse the expression: {e.msg}") from None
    except (ValueError, MemoryError, RecursionError) as e:  # e.g. an int literal past Python's digit limit
        raise ToolError(f"cannot parse the expression: {str(e)[:120] or type(e).__name__}") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise ToolError(f"the expression is too long ({count} parts; at most {MAX_NODES})")
    return format_result(_walk(tree.body, source))


def run(arguments: dict, context=None) -> str:
    """The tool's entry point: `{"expression": ...}` -> the result text."""
    expression = arguments.get("expression")
    if not isinstance(expression, str):
        raise ToolError('calculator needs {"expression": "<arithmetic>"}')
    return evaluate(expression)
