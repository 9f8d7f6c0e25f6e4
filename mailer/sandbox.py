"""Running the operator's templates safely.

Templates come from the operator's folder and are run in Jinja2's sandbox
(no attributes starting with _, no unsafe methods) with a budget per
render: every loop iteration, call and arithmetic operation is a step, and a
render is stopped past RENDER_STEPS steps or RENDER_SECONDS seconds. The
budget is counted by the template's own code, not by a signal or a
watchdog thread, so it works the same in the daemon's threads and the
compose worker processes. What it cannot stop is one built-in operation
that is slow by itself; the big ones (huge powers, repetitions and
formatting widths) are refused before they start.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.nodes
import jinja2.runtime
from jinja2.sandbox import SandboxedEnvironment

RENDER_SECONDS = 5.0
RENDER_STEPS = 2_000_000
MAX_BUILT = 1_000_000  # items or characters an operator may make in a template
_WIDE_FORMAT = re.compile(r"%[-+ #0]*\d{7}|%[-+ #0]*\d*\.\d{7}")


class RenderBudgetError(jinja2.exceptions.SecurityError):
    """A template took more steps or time than one render may."""


@dataclass
class _Budget:
    deadline: float
    steps: int = 0


_BUDGET: ContextVar[_Budget | None] = ContextVar("render_budget", default=None)


def _step() -> None:
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.steps += 1
    if budget.steps > RENDER_STEPS:
        raise RenderBudgetError(f"more than {RENDER_STEPS} steps (loop iterations and calls)")
    if time.monotonic() > budget.deadline:
        raise RenderBudgetError(f"took more than {RENDER_SECONDS:g} seconds")


def _budgeted(items: Iterable[object]) -> Iterator[object]:
    """Every loop's iterable goes through this, so each iteration is a step."""
    for item in items:
        _step()
        yield item


class Sandbox(SandboxedEnvironment):
    """Jinja2's sandbox, with every loop iteration, call and arithmetic
    operation counted against the render budget (``budget``). Objects of the
    ``plain`` types are read without the sandbox's attribute checks: they
    hold plain values, and the checks were half of rendering."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *, plain: frozenset[type] = frozenset(), **options: Any) -> None:
        super().__init__(**options)
        self.plain = plain
        self.filters["_budgeted"] = _budgeted

    def _parse(self, source: str, name: str | None, filename: str | None) -> jinja2.nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(jinja2.nodes.For):
            loop.iter = jinja2.nodes.Filter(
                loop.iter, "_budgeted", [], [], None, None, lineno=loop.lineno
            )
        return tree

    def call(
        __self,  # noqa: N805 -- Jinja's positional-only convention
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        _step()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) in self.plain and not attribute.startswith("_"):
            try:
                return getattr(obj, attribute)
            except AttributeError:
                pass
        return super().getattr(obj, attribute)

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        _step()
        if operator == "**" and isinstance(right, int | float) and abs(right) > 1000:
            raise RenderBudgetError(f"power with an exponent of {right} is too big")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > MAX_BUILT
                ):
                    raise RenderBudgetError(f"repeating {len(seq)} items {n} times is too big")
        if operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise RenderBudgetError("a formatting width of a million or more is too big")
        return super().call_binop(context, operator, left, right)


@contextmanager
def budget() -> Iterator[None]:
    """One render's budget: RENDER_STEPS steps and RENDER_SECONDS seconds."""
    token = _BUDGET.set(_Budget(time.monotonic() + RENDER_SECONDS))
    try:
        yield
    finally:
        _BUDGET.reset(token)
