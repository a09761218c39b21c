"""FHIRPath for ``$populate``: expressions parsed strictly and evaluated on a budget.

Evaluation is the ``fhirpathpy`` library's (the R4 model, so choice types resolve). This
module adds what a server evaluating its callers' expressions needs:

- a strict parse: ``fhirpathpy.parse`` recovers from a syntax error silently and evaluates
  what it could make of the rest; :func:`compile_expression` raises instead;
- refused functions (:data:`UNSUPPORTED_FUNCTIONS`);
- a :class:`Budget` of work per request.

:mod:`gateway.operations.populate` imports this module on first use, so the processes
that never populate a form (the CLI, the workers, which import the gateway through the
composition root) do not load fhirpathpy and its R4 model (~9 MB, 60 ms).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import fhirpathpy.engine as fhirpath_engine
from antlr4 import CommonTokenStream, InputStream, ParseTreeWalker
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import FP_Type
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

#: The longest FHIRPath expression evaluated.
MAX_EXPRESSION_LENGTH = 4096
_R4 = models["r4"]

Values = list[Any]
#: A compiled expression: (focus resource, variables, the request's budget) -> values.
Expression = Callable[[Any, Mapping[str, Any], "Budget"], Values]


class ExpressionError(ValueError):
    """A FHIRPath expression that does not parse (its text is the Questionnaire's, not PHI)."""


class UnsupportedFunctionError(ExpressionError):
    """An expression calling a function this server does not evaluate (see
    :data:`UNSUPPORTED_FUNCTIONS`)."""


#: FHIRPath functions refused: they take a regular expression, and Python's ``re`` has no
#: time limit (``'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!'.matches('(a+)+$')`` backtracks for
#: minutes, inside one call no budget can interrupt).
UNSUPPORTED_FUNCTIONS = frozenset({"matches", "matchesFull", "replaceMatches"})


def _functions(node: dict[str, Any]) -> set[str]:
    """The names of the functions a parsed expression calls."""
    names: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        children = current.get("children") or []
        if current.get("type") == "Functn" and children:
            text = children[0].get("text")
            if isinstance(text, str):
                names.add(text.strip("`"))
        stack.extend(children)
    return names


class BudgetExceededError(RuntimeError):
    """A request's FHIRPath evaluation took more steps, or built a larger collection, than
    :class:`Budget` allows."""


class Budget:
    """The FHIRPath work one ``$populate`` request may do.

    FHIRPath has constructs that never end or grow without bound over a small input:
    ``1.repeat($this + 1)`` loops for ever, and ``select``, ``combine`` or ``aggregate``
    chained through variables multiply a collection's size at each step. Any caller with
    ``system/Patient.r`` sends the expressions, so each request gets a budget of
    evaluation steps (:data:`MAX_STEPS`, and :data:`MAX_EXPRESSION_STEPS` for one
    expression: each node of an expression evaluated, and each value it gives), of
    collection size (:data:`MAX_COLLECTION`) and of string length (:data:`MAX_STRING`)."""

    __slots__ = ("expression_steps", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.expression_steps = 0

    def next_expression(self) -> None:
        """Start counting a new expression's own steps."""
        self.expression_steps = 0

    def spend(self, steps: int = 1) -> None:
        self.steps += steps
        self.expression_steps += steps
        if self.expression_steps > MAX_EXPRESSION_STEPS:
            raise BudgetExceededError(
                f"more than {MAX_EXPRESSION_STEPS} evaluation steps in one expression"
            )
        if self.steps > MAX_STEPS:
            raise BudgetExceededError(f"more than {MAX_STEPS} evaluation steps in this request")


#: The variable that carries a request's :class:`Budget` into fhirpathpy's evaluation (a
#: name no FHIRPath expression can write without backticks; it is not a FHIR value).
_BUDGET = "askonce budget"
MAX_STEPS = 100_000
#: One runaway expression stops here, leaving the rest of the request's budget to the
#: others (the demo's intake form spends ~900 steps in all).
MAX_EXPRESSION_STEPS = 20_000
MAX_COLLECTION = 1000
#: The longest string an expression may build: ``replace`` and ``+`` chained through
#: variables grow a string geometrically, in steps the budget counts as a few.
MAX_STRING = 10_000
_evaluate_node = fhirpath_engine.do_eval


def _budgeted_do_eval(ctx: dict[str, Any], parent: Any, node: dict[str, Any]) -> Any:
    """fhirpathpy's node evaluator, counting steps and checking collection sizes against
    the :class:`Budget` in the evaluation's variables (evaluations without one, by other
    callers of the library, are not affected). fhirpathpy's evaluators call
    ``fhirpathpy.engine.do_eval`` by module attribute, so this is installed there."""
    variables = ctx.get("vars")
    budget = variables.get(_BUDGET) if variables else None
    if budget is None:
        return _evaluate_node(ctx, parent, node)
    budget.spend()
    result = _evaluate_node(ctx, parent, node)
    if isinstance(result, list):
        if len(result) > MAX_COLLECTION:
            raise BudgetExceededError(f"a collection of more than {MAX_COLLECTION} values")
        # Each value a node gives costs a step too: a variable of 1,000 values read inside
        # a select over 1,000 others builds a million.
        budget.spend(len(result))
        for value in result:
            text = getattr(value, "data", value)
            if isinstance(text, str) and len(text) > MAX_STRING:
                raise BudgetExceededError(f"a string of more than {MAX_STRING} characters")
    return result


fhirpath_engine.do_eval = _budgeted_do_eval


class _Strict(ErrorListener):
    def syntaxError(
        self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        raise ExpressionError(f"column {column}: {msg}")


@lru_cache(maxsize=512)
def compile_expression(expression: str) -> Expression:
    """A FHIRPath expression, parsed once (the R4 model, so choice types resolve).

    ``fhirpathpy.parse`` recovers from a syntax error silently and evaluates what it
    could make of the rest; this parse runs the same lexer and parser with a listener
    that raises, so a malformed expression is reported, not half-evaluated."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_LENGTH} characters")
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Strict())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.buildParseTrees = True
    parser.removeErrorListeners()
    parser.addErrorListener(_Strict())
    listener = ASTPathListener()
    ParseTreeWalker().walk(listener, parser.expression())
    parsed = listener.parentStack[0]
    refused = _functions(parsed) & UNSUPPORTED_FUNCTIONS
    if refused:
        names = ", ".join(f"{name}()" for name in sorted(refused))
        raise UnsupportedFunctionError(f"{names}: regular expressions are not evaluated here")

    def run(resource: Any, variables: Mapping[str, Any], budget: Budget) -> Values:
        budget.next_expression()
        found = apply_parsed_path(resource, parsed, {**variables, _BUDGET: budget}, _R4)
        return [plain(value) for value in found]

    return run


def plain(value: Any) -> Any:
    """A FHIRPath result as JSON data (its date, time and quantity types as FHIR text)."""
    if isinstance(value, FP_Type):
        return str(value)
    return value
