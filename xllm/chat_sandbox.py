"""The bounds a chat template renders under: steps, sizes, output and time.

jinja2's sandbox keeps a template away from Python's internals; it does not keep one from
running for ever (`{% for a in range(100000) %}{% for b in range(100000) %}`), from building a
gigabyte (`'x' * 10**9`, `'{:>999999999}'.format(1)`, `'x'|center(10**9)`), a number of a
billion digits (`9 ** 9 ** 9`, folded at compile time if not intercepted), or a list that
doubles at every step and prints as 2**50 items.  A chat template is untrusted input (it comes
with a model file, and the conversation comes from a client), so every compile and render of
a ChatTemplate runs under a Budget of `RenderLimits`:

- steps: one per item a loop takes, per template node a loop, macro or block body runs, per
  call, filter and test, per item a filter goes through, and per 64 characters of a value
  compared, hashed or printed;
- sizes: no string, bytes or list the template makes over `max_chars` characters /
  `max_items` items, no integer over `max_int_bits` bits, and no more than `max_created`
  characters made in all; the operators, methods and filters that could make a large value
  (`*`, `**`, `+`, `%`, `~`, center / ljust / format widths, replace, join, indent, batch,
  slice, tojson, ...) are checked *before* they run, everything else is measured after;
- output: at most `max_output` characters;
- time: `max_seconds` of wall time, a backstop checked with every step;
- source: at most `max_source_chars` characters of template text (compiling takes its time).

How: the parsed template is rewritten before it is compiled (`bound_template`): every
`{% for %}` iterates through `_xllm_items`, each item paying for a run of the body, and every
macro, call block and block body (and a recursive loop's) starts by charging its size; comparisons, concatenations and dict keys pass their
operands through `_xllm_deep`.  The environment (`BoundedSandbox`) intercepts the growing
binary operators, calls, item access and `str.format`, wraps every filter and test, and
finalizes every printed value.  Exceeding a bound raises `BudgetExceeded` (a jinja2
SecurityError), which ChatTemplate reports as a ValueError naming the template.
"""
from __future__ import annotations

import contextvars
import json
import math
import re
import time
from dataclasses import dataclass
from functools import wraps

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import generate_lorem_ipsum, pass_context
from jinja2.visitor import NodeTransformer
from markupsafe import Markup


@dataclass(frozen=True)
class RenderLimits:
    max_steps: int = 1_000_000
    max_chars: int = 4_000_000          # one string / bytes value, and the rendered prompt
    max_items: int = 1_000_000          # one list, tuple or dict
    max_created: int = 16_000_000       # characters and items made in one render, all told
    max_int_bits: int = 1 << 16
    max_seconds: float = 5.0
    max_source_chars: int = 65_536      # template text: jinja2 compiles ~10 us a character

    @property
    def max_output(self) -> int:
        return self.max_chars


class BudgetExceeded(jinja2.exceptions.SecurityError):
    """A template went over one of its RenderLimits."""


_SIZED = (str, bytes, list, tuple, dict)
_DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))     # print their contents
_SCALARS = (type(None), bool, int, float)
_SCALAR_TYPES = frozenset(_SCALARS)


class Budget:
    """What one compile or render has used of its limits."""

    def __init__(self, limits: RenderLimits):
        self.limits = limits
        self.steps = 0
        self.created = 0
        self.deadline = time.monotonic() + limits.max_seconds
        self.next_check = 0                 # steps at which limit and clock are looked at next
        self._weights: dict = {}            # id -> (container, weight): containers are immutable here

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps >= self.next_check:
            self.check()

    def check(self) -> None:
        if self.steps > self.limits.max_steps:
            raise BudgetExceeded(f"the template took more than {self.limits.max_steps:,} steps "
                                 f"(loop items, loop and macro body nodes, calls)")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"the template ran longer than {self.limits.max_seconds:g} s")
        self.next_check = min(self.limits.max_steps + 1, self.steps + 4096)   # the clock every ~4k steps

    def check_size(self, n: int, what: str = "a value", items: bool = False) -> None:
        """Refuse a value of n characters (items) before it is made."""
        limit = self.limits.max_items if items else self.limits.max_chars
        if n > limit:
            unit = "items" if items else "characters"
            raise BudgetExceeded(f"the template would make {what} of {n:,} {unit}, "
                                 f"more than the limit of {limit:,}")

    def made(self, value, what: str = "a value"):
        """Account for a value the template made (checked and counted); returns it."""
        if isinstance(value, (str, bytes)):
            n, items = len(value), False
        elif isinstance(value, (list, tuple, dict)):
            n, items = len(value), True
        elif isinstance(value, int) and not isinstance(value, bool):
            self.check_int(value.bit_length())
            return value
        else:
            return value
        self.check_size(n, what, items)
        self.created += n
        if self.created > self.limits.max_created:
            raise BudgetExceeded(f"the template made more than {self.limits.max_created:,} "
                                 f"characters and items in all")
        self.step(4 + n // 1024)          # a hook call costs what a few loop items do
        return value

    def check_int(self, bits: int) -> None:
        if bits > self.limits.max_int_bits:
            raise BudgetExceeded(f"the template would make an integer of {bits:,} bits, "
                                 f"more than the limit of {self.limits.max_int_bits:,}")

    def weight(self, value) -> int:
        """About the characters str(value) has, containers unfolded (a list holding the same
        list twice counts it twice), computed once per container; BudgetExceeded past max_chars."""
        if isinstance(value, (str, bytes)):
            return len(value) + 2
        if isinstance(value, _SCALARS):
            return 8 if not isinstance(value, int) else 8 + value.bit_length() // 3
        if isinstance(value, _DICT_VIEWS):
            value = list(value)
        elif not isinstance(value, (list, tuple, dict)):
            return 16                        # namespaces, macros, undefined: short reprs
        known = self._weights.get(id(value))
        if known is not None:
            return known[1]
        self.step(1 + len(value))            # a walk in Python: a step per element
        parts = value.items() if isinstance(value, dict) else ((v,) for v in value)
        total = 2
        for part in parts:
            for v in part:
                total += self.weight(v) + 2
            if total > self.limits.max_chars:
                raise BudgetExceeded(f"the template uses a value that prints as more than "
                                     f"{self.limits.max_chars:,} characters")
        self._weights[id(value)] = (value, total)
        return total

    def deep(self, value):
        """Before a value is compared, hashed or printed: its unfolded size is bounded and paid
        for in steps."""
        if isinstance(value, _SCALARS):
            return value
        self.step(4 + self.weight(value) // 64)
        return value


_current: contextvars.ContextVar = contextvars.ContextVar("xllm_chat_budget", default=None)


def current() -> Budget:
    budget = _current.get()
    if budget is None:          # outside compile / render (a direct jinja2 call): a fresh one
        budget = Budget(RenderLimits())
        _current.set(budget)
    return budget


class budget_scope:
    """`with budget_scope(limits): ...` -- compile or render under a fresh Budget."""

    def __init__(self, limits: RenderLimits):
        self.budget = Budget(limits)

    def __enter__(self) -> Budget:
        self._token = _current.set(self.budget)
        return self.budget

    def __exit__(self, *exc):
        _current.reset(self._token)
        return False


# ----------------------------------------------------------------------------- pre-checks

_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _spec_number(digits: str) -> int:
    return int(digits) if len(digits) <= 12 else 10 ** 12


def _check_printf(budget: Budget, fmt, args) -> None:
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    star = False
    for width, precision in _PRINTF_SPEC.findall(text):
        for n in (width, precision):
            if n == "*":
                star = True
            elif n:
                budget.check_size(_spec_number(n), "a formatted field")
    values = args if isinstance(args, tuple) else (args,)
    if star:
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool):
                budget.check_size(abs(v), "a formatted field")
    budget.deep(args)
    budget.check_size(len(fmt) + budget.weight(args), "a formatted string")


def _check_width(budget: Budget, s, width) -> None:
    if isinstance(width, int) and not isinstance(width, bool):
        budget.check_size(max(len(s), width), "a padded string")


def _check_replace(budget: Budget, s, old, new, count=-1) -> None:
    if not (isinstance(s, (str, bytes)) and isinstance(old, type(s)) and isinstance(new, type(s))):
        return
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    budget.check_size(len(s) + hits * max(0, len(new) - len(old)), "a replaced string")


def _check_join(budget: Budget, sep, items) -> list:
    items = list(_items(budget, items, 1))
    budget.check_size(len(items), "a joined list", items=True)
    total = len(sep) * max(0, len(items) - 1) + sum(
        len(i) if isinstance(i, (str, bytes)) else budget.weight(i) for i in items)
    budget.check_size(total, "a joined string")
    return items


def _check_str_method(budget: Budget, s, name: str, args, kwargs) -> tuple:
    """Bound the str / bytes methods whose result can be much longer than the string."""
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _check_width(budget, s, args[0])
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int):
            budget.check_size(len(s) + (s.count("\t" if isinstance(s, str) else b"\t") + 1) * max(tab, 0),
                              "an expanded string")
    elif name == "replace" and len(args) >= 2:
        _check_replace(budget, s, *args[:3])
    elif name == "join" and args:
        args = (_check_join(budget, s, args[0]),) + tuple(args[1:])
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
        budget.check_size(len(s) * max(longest, 1), "a translated string")
    return args


# ----------------------------------------------------------------------------- filters and tests

# filters that cost O(1) whatever their input (no charge by size)
_CONSTANT_FILTERS = {"length", "count", "first", "default", "d", "attr", "abs", "int", "float",
                     "round", "safe", "filesizeformat", "random", "capitalize"}
# filters that only go through their input's top level (charged by its length, not deep)
_SHALLOW_FILTERS = {"list", "reverse", "batch", "slice", "map", "select", "reject", "selectattr",
                    "rejectattr", "items", "last", "sum", "min", "max", "groupby"}
_COMPARING_TESTS = {"in", "==", "eq", "equalto", "!=", "ne", ">", "gt", ">=", "ge", "<", "lt",
                    "<=", "le", "lower", "upper"}


def _pre_filter(budget: Budget, name: str, value, args, kwargs) -> None:
    arg = (lambda i, key, default=None: args[i] if len(args) > i else kwargs.get(key, default))
    if name == "center":
        _check_width(budget, str(value), arg(0, "width", 80))
    elif name == "indent":
        width = arg(0, "width", 4)
        w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        s = str(value)
        budget.check_size(len(s) + (s.count("\n") + 1) * max(w, 0), "an indented string")
    elif name == "join" and isinstance(value, _SIZED + (range,)):
        _check_join(budget, str(arg(0, "d", "")), value)
    elif name == "format":
        _check_printf(budget, str(value), tuple(args) or kwargs)
    elif name == "replace" and len(args) >= 2:
        _check_replace(budget, str(value), str(args[0]), str(args[1]), args[2] if len(args) > 2 else kwargs.get("count"))
    elif name in ("batch", "slice"):
        n = arg(0, "linecount" if name == "batch" else "slices", 1)
        if isinstance(n, int):
            budget.check_size(abs(n), f"a {name}", items=True)
    elif name in ("wordwrap", "urlize"):        # pure-Python text walks: a step per character
        wrap = (arg(2, "wrapstring") or "\n") if name == "wordwrap" else ""
        budget.check_size((len(str(value)) + 1) * (len(str(wrap)) + 1), "a wrapped string" if name == "wordwrap" else "a urlized string")
        budget.step(len(str(value)))
    elif name in ("sort", "dictsort", "unique") and isinstance(value, _SIZED):
        budget.step(len(value) * max(1, math.ceil(math.log2(len(value) + 1))))
    elif name in ("striptags", "wordcount", "title", "urlencode", "xmlattr", "escape",
                  "e", "forceescape", "trim", "truncate"):
        budget.step(len(str(value)) // 16)
    elif name == "pprint":
        budget.check_size(budget.weight(value) * 16, "a pretty-printed value")


def _sum(environment, iterable, attribute=None, start=0):
    """jinja2's sum, with every addition through the checked `+` (summing lists is quadratic)."""
    if attribute is not None:
        from jinja2.filters import make_attrgetter
        iterable = map(make_attrgetter(environment, attribute), iterable)
    total = start
    for value in iterable:
        total = environment.call_binop(None, "+", total, value)
    return total


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' filter (no HTML escaping), encoded in pieces so a large result stops early
    budget = current()
    budget.deep(x)
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                               sort_keys=sort_keys)
    pieces, n = [], 0
    for piece in encoder.iterencode(x):
        n += len(piece)
        budget.check_size(n, "a JSON text")
        pieces.append(piece)
        if len(pieces) % 256 == 0:
            budget.step(1)
    return "".join(pieces)


def _lipsum(n=5, html=True, min=20, max=100):
    budget = current()
    for v in (n, min, max):
        if isinstance(v, int):
            budget.check_size(abs(v), "lorem ipsum", items=True)
    if isinstance(n, int) and isinstance(max, int):
        budget.check_size(abs(n) * abs(max) * 12, "lorem ipsum")
        budget.step(abs(n) * abs(max))
    return generate_lorem_ipsum(n, html, min, max)


def _bounded(name: str, fn, kind: str):
    """A filter or test wrapped with the budget (keeps jinja's pass_* marks via wraps)."""
    from jinja2.utils import _PassArg
    skip = 1 if _PassArg.from_obj(fn) is not None else 0

    @wraps(fn)
    def wrapper(*args, **kwargs):
        budget = current()
        budget.step(1)
        values = args[skip:]
        if kind == "filter":
            if name in _SHALLOW_FILTERS:
                if values and isinstance(values[0], _SIZED):
                    budget.step(len(values[0]))
            elif name not in _CONSTANT_FILTERS:
                for v in (*values, *kwargs.values()):
                    budget.deep(v)
            if values:
                _pre_filter(budget, name, values[0], values[1:], kwargs)
        elif name in _COMPARING_TESTS:
            for v in values:
                budget.deep(v)
        return _result(budget, fn(*args, **kwargs))
    return wrapper


def _items(budget: Budget, iterable, cost: int):
    """Iterate, paying `cost` steps per item (the hot loop of every {% for %}: inlined step)."""
    for item in iterable:
        budget.steps += cost
        if budget.steps >= budget.next_check:
            budget.check()
        yield item


def _result(budget: Budget, value):
    if isinstance(value, _SIZED):
        return budget.made(value)
    if isinstance(value, int) and not isinstance(value, bool):
        budget.check_int(value.bit_length())
    elif hasattr(value, "__next__"):            # generators of map / select / batch ...
        return _items(budget, value, 1)
    return value


# the rewrite's hooks (pass_context: never folded into constants at compile time)

@pass_context
def _hook_items(context, iterable, cost=1):
    return _items(current(), iterable, cost)


@pass_context
def _hook_charge(context, cost):
    current().step(cost)
    return ""


@pass_context
def _hook_deep(context, value):
    if type(value) in _SCALAR_TYPES:     # most comparisons: roles, indices
        return value
    return current().deep(value)


@pass_context
def _hook_concat(context, *parts):
    budget = current()
    texts = [p if isinstance(p, str) else str(budget.deep(p)) for p in parts]
    budget.check_size(sum(map(len, texts)), "a concatenated string")
    return budget.made("".join(texts))


@pass_context
def _hook_slice(context, value, start=None, stop=None, step=None):
    # jinja2 compiles obj[a:b:c] to a plain subscript, past the sandbox's getitem: a copy
    budget = current()
    piece = slice(start, stop, step)
    if isinstance(value, _SIZED) and not isinstance(value, dict):
        budget.check_size(len(range(*piece.indices(len(value)))), "a slice",
                          items=not isinstance(value, (str, bytes)))
    return _result(budget, value[piece])


HOOKS = {"_xllm_items": _hook_items, "_xllm_slice": _hook_slice, "_xllm_charge": _hook_charge, "_xllm_deep": _hook_deep,
         "_xllm_concat": _hook_concat}


# ----------------------------------------------------------------------------- the environment

class _BoundedFormatter(SandboxedFormatter):
    def format_field(self, value, format_spec):
        budget = current()
        for n in _DIGITS.findall(format_spec):
            budget.check_size(_spec_number(n), "a formatted field")
        budget.deep(value)
        return budget.made(super().format_field(value, format_spec))


def _finalize(value):
    """Every printed value: its text, bounded."""
    if isinstance(value, str):
        return current().made(value, "a printed value")
    budget = current()
    budget.deep(value)
    budget.step(16)                         # str() of a container: a walk in Python
    return budget.made(str(value), "a printed value")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, every operation under the current Budget."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("finalize", _finalize)
        super().__init__(*args, **kwargs)
        self.filters = {name: _bounded(name, fn, "filter") for name, fn in self.filters.items()}
        self.filters["sum"] = _bounded("sum", jinja2.pass_environment(_sum), "filter")
        self.filters["tojson"] = _bounded("tojson", _tojson, "filter")
        self.filters.update(HOOKS)
        self.tests = {name: _bounded(name, fn, "test") for name, fn in self.tests.items()}
        self.globals["lipsum"] = _lipsum

    def add_filter(self, name: str, fn) -> None:
        self.filters[name] = _bounded(name, fn, "filter")

    def call_binop(self, context, op, left, right):
        if type(left) in _SCALAR_TYPES and type(right) in _SCALAR_TYPES and op != "*" and op != "**":
            return self.binop_table[op](left, right)      # O(1); its node is paid for by its body
        budget = current()
        budget.step(1)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right))
        if op == "+":
            if isinstance(left, _SIZED) and isinstance(right, _SIZED):
                budget.check_size(len(left) + len(right), "a sum", items=not isinstance(left, (str, bytes)))
        elif op == "*":
            if ints:
                budget.check_int(left.bit_length() + right.bit_length())
            else:
                seq, n = (left, right) if isinstance(left, _SIZED) else (right, left)
                if isinstance(seq, _SIZED) and isinstance(n, int):
                    budget.check_size(len(seq) * max(n, 0), "a repeated value",
                                      items=not isinstance(seq, (str, bytes)))
        elif op == "**":
            if ints and right > 0 and abs(left) > 1:
                budget.check_int(min(right, 1 << 40) * left.bit_length())
        elif op == "%" and isinstance(left, (str, bytes)):
            _check_printf(budget, left, right)
        return _result(budget, self.binop_table[op](left, right))

    def call(__self, __context, __obj, *args, **kwargs):
        if not __self.is_safe_callable(__obj):
            raise jinja2.exceptions.SecurityError(f"{__obj!r} is not safely callable")
        budget = current()
        budget.step(16 if isinstance(__obj, Macro) else 8)     # what a call costs next to a loop item
        if isinstance(__obj, LoopContext):          # loop(children) of a recursive loop
            if args:
                args = (_items(budget, args[0], 1),) + args[1:]
        elif not isinstance(__obj, Macro):
            receiver = getattr(__obj, "__self__", None)
            if isinstance(receiver, (str, bytes)):
                args = _check_str_method(budget, receiver, getattr(__obj, "__name__", ""), args, kwargs)
            for v in (*args, *kwargs.values()):
                budget.deep(v)
        return _result(budget, __context.call(__obj, *args, **kwargs))

    def getitem(self, obj, argument):
        budget = current()
        if isinstance(argument, (tuple, list, dict)):
            budget.deep(argument)               # hashed
        value = super().getitem(obj, argument)
        if isinstance(argument, slice):
            return _result(budget, value)       # a copy
        return value

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None or isinstance(value.__self__, Markup):
            return wrapped
        f_self, is_map = value.__self__, value.__name__ == "format_map"
        formatter = _BoundedFormatter(self)

        @wraps(value)
        def bounded_format(*args, **kwargs):
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one positional argument")
                args, kwargs = (), args[0]
            return current().made(type(f_self)(formatter.vformat(f_self, args, kwargs)))
        return bounded_format


# ----------------------------------------------------------------------------- the rewrite

def _cost(body) -> int:
    """Steps one run of a body costs: its nodes, and its constant text by 16 characters."""
    total = 0
    stack = list(body)
    while stack:
        node = stack.pop()
        total += 1
        if isinstance(node, nodes.TemplateData) or (isinstance(node, nodes.Const) and isinstance(node.value, str)):
            total += len(node.data if isinstance(node, nodes.TemplateData) else node.value) // 16
        stack.extend(node.iter_child_nodes())
    return total


def _hook(name: str, node, *args, lineno=None):
    return nodes.Filter(node, name, list(args), [], None, None, lineno=lineno or getattr(node, "lineno", 1))


def _charged(body, lineno):
    return [nodes.ExprStmt(_hook("_xllm_charge", nodes.Const(1 + _cost(body)), lineno=lineno),
                           lineno=lineno)] + list(body)


def _deep(node):
    return node if isinstance(node, nodes.Const) else _hook("_xllm_deep", node)


class _Bound(NodeTransformer):
    def visit_For(self, node):
        node = self.generic_visit(node)
        if node.recursive:      # loop(...) calls iterate past node.iter: the body pays itself
            node.iter = _hook("_xllm_items", node.iter)
            node.body = _charged(node.body, node.lineno)
        else:                   # each item pays for a run of the body (if filtered out, too)
            node.iter = _hook("_xllm_items", node.iter, nodes.Const(2 + _cost(node.body)))
        return node

    def _charge_body(self, node):
        node = self.generic_visit(node)
        node.body = _charged(node.body, node.lineno)
        return node

    visit_Macro = visit_CallBlock = visit_Block = _charge_body

    def visit_Compare(self, node):
        node = self.generic_visit(node)
        node.expr = _deep(node.expr)
        for operand in node.ops:
            operand.expr = _deep(operand.expr)
        return node

    def visit_Concat(self, node):
        node = self.generic_visit(node)
        first, *rest = node.nodes
        return _hook("_xllm_concat", first, *rest)

    def visit_Getitem(self, node):
        node = self.generic_visit(node)
        if isinstance(node.arg, nodes.Slice):
            parts = [p if p is not None else nodes.Const(None) for p in (node.arg.start, node.arg.stop, node.arg.step)]
            return _hook("_xllm_slice", node.node, *parts)
        return node

    def visit_Dict(self, node):
        node = self.generic_visit(node)
        for pair in node.items:
            pair.key = _deep(pair.key)
        return node


MAX_LOOP_NESTING = 20       # Python's own limit on statically nested blocks (CO_MAXBLOCKS)
MAX_NESTING = 100           # and on indentation levels: the generated code could not compile


def _check_nesting(ast) -> None:
    """Refuse before code generation what Python would refuse after it: jinja2's code
    generator takes time cubic in the depth of nested loops (seconds at 80)."""
    stack = [(ast, 0, 0)]
    while stack:
        node, depth, loops = stack.pop()
        if loops > MAX_LOOP_NESTING:
            raise BudgetExceeded(f"loops nested {loops} deep, at most {MAX_LOOP_NESTING} compile")
        if depth > MAX_NESTING:
            raise BudgetExceeded(f"blocks nested {depth} deep, at most {MAX_NESTING} compile")
        for child in node.iter_child_nodes():
            block = isinstance(child, nodes.Stmt)
            stack.append((child, depth + block, loops + isinstance(child, nodes.For)))


def bound_template(env: BoundedSandbox, source: str, limits: RenderLimits):
    """Parse, rewrite and compile `source` (under a budget: the compiler folds constants)."""
    if len(source) > limits.max_source_chars:
        raise BudgetExceeded(f"the template has {len(source):,} characters, more than the limit of "
                             f"{limits.max_source_chars:,} (real models' templates have a few thousand)")
    with budget_scope(limits):
        ast = env.parse(source)
        _check_nesting(ast)
        return env.from_string(_Bound().visit(ast))


def render_bounded(template, limits: RenderLimits, variables: dict) -> str:
    with budget_scope(limits) as budget:
        text = template.render(**variables)
        if len(text) > limits.max_output:
            raise BudgetExceeded(f"the rendered prompt has {len(text):,} characters, more than "
                                 f"the limit of {limits.max_output:,}")
        del budget
        return text

