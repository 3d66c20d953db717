"""Runs a model's Python program inside the `programmer` plugin, with
bounds of its own, and says what it printed.

This is a guard, not the security boundary. The boundary is the plugin's
WebAssembly sandbox: whatever a program does, it can do no more than the
plugin itself (no files, no sockets, no clock beyond WASI's, model calls
only through the host, which counts and bounds them), and the host stops
the plugin at its compute deadline and memory cap. The guard is there so
that an ordinary bad program (a loop that never ends, a huge list, an
`import os`) fails with a reason the team can read, instead of the whole
replica trapping:

- only the modules in `ALLOWED_MODULES` may be imported, and a program sees
  only their public names, less the modules they import themselves;
- names and attributes that start with `__`, and the attributes that lead
  from an object to the interpreter's frames (`gi_frame`, `f_globals`,
  `tb_frame`, ...), are refused before the program runs;
- the builtins are a short list: no `open`, `eval`, `exec`, `compile`,
  `getattr`, `globals`, `vars`, `input`, `breakpoint`;
- `max_steps` bounds the steps taken: loop iterations, function calls and
  items drawn by comprehensions; `max_output` the characters printed;
- a `MemoryError` (the host refuses to grow the plugin's memory past its cap)
  is caught and reported.

Work done inside one C call (`10 ** 10 ** 9`, `sum(range(10 ** 12))`) is not
counted in steps: the host's compute deadline ends it, and the replica fails.
"""

import ast
import types
from dataclasses import dataclass
from typing import Optional

# Imported here so that componentize-py bundles them into the component
# (it bundles only the modules the app imports); a program gets them
# through `_public`.
import bisect  # noqa: F401
import cmath  # noqa: F401
import collections  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import math  # noqa: F401
import re  # noqa: F401
import statistics  # noqa: F401

#: Modules a program may import: arithmetic and data structures only.
ALLOWED_MODULES = frozenset({
    "math", "cmath", "fractions", "decimal", "statistics", "itertools",
    "functools", "collections", "re", "heapq", "bisect", "datetime",
})

#: Attributes that lead from an object to the interpreter's frames and code
#: (a generator's `gi_frame`, a frame's `f_globals`, a traceback's
#: `tb_frame`): refused, like every `__dunder__`.
_FRAME_PREFIXES = ("f_", "gi_", "cr_", "ag_", "tb_", "co_")

_BUILTIN_NAMES = (
    "abs", "all", "any", "bin", "bool", "chr", "dict", "divmod", "enumerate",
    "filter", "float", "format", "frozenset", "hex", "int", "isinstance", "len",
    "list", "map", "max", "min", "next", "oct", "ord", "pow", "range", "repr",
    "reversed", "round", "set", "slice", "sorted", "str", "sum", "tuple", "zip",
    "complex", "iter", "hash",
    "ArithmeticError", "AssertionError", "Exception", "IndexError", "KeyError",
    "OverflowError", "StopIteration", "TypeError", "ValueError",
    "ZeroDivisionError",
)

#: Default bounds; the plugin's config may lower or raise them.
MAX_STEPS = 100_000
MAX_OUTPUT = 4_000
MAX_SOURCE = 8_000


@dataclass
class Ran:
    """What running a program gave: its printed output, or why it failed."""
    output: str
    error: Optional[str] = None
    #: Steps taken (loop iterations, calls, comprehension items).
    steps: int = 0
    #: Its `answer` (or `result`) variable, when it printed nothing.
    value: Optional[str] = None


class StepLimit(BaseException):
    """Raised into a program that ran past its steps. A BaseException, so
    that `except Exception` in the program does not swallow it; every later
    step raises it again, so a bare `except` cannot either."""


class _Refused(Exception):
    pass


def check(source: str) -> Optional[str]:
    """Why `source` may not run (a syntax error, a refused import, name or
    attribute), or None when it may."""
    if len(source) > MAX_SOURCE:
        return f"the program is {len(source)} characters long, over the {MAX_SOURCE} allowed"
    try:
        tree = ast.parse(source, "<program>", "exec")
    except SyntaxError as e:
        return f"syntax error on line {e.lineno}: {e.msg}"
    except (ValueError, MemoryError, RecursionError) as e:
        return f"the program cannot be parsed: {e}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root not in ALLOWED_MODULES:
                    return f"line {node.lineno}: import of `{alias.name}` is not allowed"
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if node.level or root not in ALLOWED_MODULES:
                return f"line {node.lineno}: import from `{node.module}` is not allowed"
        elif isinstance(node, ast.Attribute) and (
                node.attr.startswith("__") or node.attr.startswith(_FRAME_PREFIXES)):
            return f"line {node.lineno}: attribute `{node.attr}` is not allowed"
        elif isinstance(node, ast.Name) and node.id.startswith("__"):
            return f"line {node.lineno}: name `{node.id}` is not allowed"
    return None


def _call(name, *args):
    return ast.Call(ast.Name(name, ast.Load()), list(args), [])


class _Ticks(ast.NodeTransformer):
    """Counts a step at the top of every loop body and function body, in
    every lambda and for every item a comprehension draws, through names the
    program cannot write (`__tick__`, `__ticked__`: dunder names are refused
    in its source). Past the limit every step raises again, and each one runs
    before the body's own statements, so no `try` in a body can keep a loop
    or a recursion going."""

    def _body(self, node):
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(_call("__tick__")))
        return node

    visit_While = visit_For = visit_AsyncFor = _body
    visit_FunctionDef = visit_AsyncFunctionDef = _body

    def visit_Lambda(self, node):
        self.generic_visit(node)
        node.body = ast.BoolOp(ast.Or(), [_call("__tick__"), node.body])
        return node

    def visit_comprehension(self, node):
        self.generic_visit(node)
        node.iter = _call("__ticked__", node.iter)
        return node


def _public(module):
    """What a program sees of an allowed module: its public names, less the
    modules it imported itself (`fractions.sys` would lead to `sys`)."""
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    view = types.SimpleNamespace()
    for name in names:
        value = getattr(module, name, None)
        if value is not None and not isinstance(value, types.ModuleType):
            setattr(view, name, value)
    return view


def run(source: str, max_steps: int = MAX_STEPS, max_output: int = MAX_OUTPUT) -> Ran:
    """Runs `source` (checked first: a refused program does not start) and
    returns what it printed."""
    refused = check(source)
    if refused is not None:
        return Ran("", refused)
    out = []
    size = [0]

    def printed(*args, sep=" ", end="\n", **_ignored):
        text = str(sep).join(str(a) for a in args) + str(end)
        if size[0] + len(text) > max_output:
            raise _Refused(f"the program printed more than {max_output} characters")
        size[0] += len(text)
        out.append(text)

    def imported(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name.split(".")[0] not in ALLOWED_MODULES:
            raise ImportError(f"import of `{name}` is not allowed")
        return _public(__import__(name))

    import builtins
    safe = {n: getattr(builtins, n) for n in _BUILTIN_NAMES}
    safe["print"] = printed
    safe["__import__"] = imported
    scope = {"__builtins__": safe, "__name__": "__program__"}

    steps = [0]

    def tick():
        steps[0] += 1
        if steps[0] > max_steps:
            raise StepLimit()

    def ticked(items):
        for item in items:
            tick()
            yield item

    safe["__tick__"] = tick
    safe["__ticked__"] = ticked
    tree = _Ticks().visit(ast.parse(source, "<program>", "exec"))
    code = compile(ast.fix_missing_locations(tree), "<program>", "exec")
    error = None
    try:
        exec(code, scope)
    except StepLimit:
        error = f"the program ran past {max_steps} steps"
    except _Refused as e:
        error = str(e)
    except MemoryError:
        error = "the program ran out of memory"
    except RecursionError:
        error = "the program recursed too deeply"
    except BaseException as e:  # the program's own failure, whatever it is
        error = f"{type(e).__name__}: {e}"[:500]
    if error is None and steps[0] > max_steps:
        error = f"the program ran past {max_steps} steps"
    value = None
    if error is None and not out:
        for name in ("answer", "result"):
            if name in scope:
                try:
                    value = str(scope[name])[:200]
                except BaseException:
                    value = None
                break
    # Whatever the program built goes now: after a MemoryError the plugin
    # needs its memory back to report.
    scope.clear()
    return Ran("".join(out), error, steps[0], value)
