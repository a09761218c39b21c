"""Matchers: a planned shape recognised by straight-line code instead of a shape walk.

:func:`fhir_mapping.shapes.shape_of` walks a resource to build its shape key (~12 us a
Patient, ~5 us an Encounter: a Python loop per key, a call per object), although a
source sends few shapes. :func:`compile_matcher` turns one resource into a function,
generated once per planned shape, that tells whether another resource has exactly that
shape and returns its leaves in :func:`~fhir_mapping.shapes.shape_of`'s order: per
object one C-built tuple of its keys and one of its values' types compared with the
shape's, per array one tuple of its items' types, and the structure keys' values.

Exactly the shape's definition: same keys in the same order, the same JSON type at
every position (``bool`` is not ``int``, ``float`` is not ``int``), the same array
lengths and null positions, the same ``resourceType`` values. Anything else, including
types no shape holds, does not match, and the caller walks the resource as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fhir_mapping.shapes import STRUCTURE_KEYS

#: A compiled matcher: the leaves of a resource of its shape, else None.
Matcher = Callable[[dict[str, Any]], tuple[Any, ...] | None]
#: Top-level key tuples remembered (all dropped when full: a few per source in practice).
DEFAULT_MAX_KEYS = 256
#: Larger resources are walked: their generated code would cost more to compile than
#: the walks it saves.
MAX_POSITIONS = 2000
_SCALARS = frozenset({str, int, float, bool})


class _Source:
    """The generated function's lines, its constants and its leaf expressions."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.leaves: list[str] = []
        self.positions = 0

    def name(self, prefix: str) -> str:
        self.positions += 1
        return f"{prefix}{self.positions}"

    def constant(self, value: Any) -> str:
        name = self.name("c")
        self.constants[name] = value
        return name

    def check(self, condition: str) -> None:
        self.lines.append(f"    if {condition}: return None")

    def node(self, expr: str, node: dict[str, Any]) -> None:
        """``expr`` holds a dict; check it holds ``node``'s shape, collect its leaves."""
        if self.positions > MAX_POSITIONS:
            raise _TooLarge
        self.check(f"tuple({expr}) != {self.constant(tuple(node))}")
        values = self.name("v")
        self.lines.append(f"    {values} = tuple({expr}.values())")
        kinds = tuple(map(type, node.values()))
        self.check(f"tuple(map(type, {values})) != {self.constant(kinds)}")
        for i, (key, value) in enumerate(node.items()):
            at = f"{values}[{i}]"
            kind = kinds[i]
            if key in STRUCTURE_KEYS:
                if value is not None:
                    self.check(f"{at} != {self.constant(value)}")
            elif kind in _SCALARS:
                self.leaves.append(at)
            elif kind is dict:
                self.node(at, value)
            elif kind is list:
                self.array(at, value)

    def array(self, expr: str, items: list[Any]) -> None:
        item_kinds = tuple(map(type, items))
        self.check(f"tuple(map(type, {expr})) != {self.constant(item_kinds)}")
        if dict not in item_kinds:
            self.leaves.append(f"tuple({expr})")
            return
        for j, item in enumerate(items):
            if type(item) is dict:
                self.node(f"{expr}[{j}]", item)


class _TooLarge(Exception):
    pass


def compile_matcher(node: dict[str, Any]) -> Matcher | None:
    """The matcher of ``node``'s shape (``node`` must have a shape: shape_of returned),
    or None for a resource too large to be worth one."""
    source = _Source()
    try:
        source.node("r", node)
    except (_TooLarge, RecursionError):
        return None
    leaves = ", ".join(source.leaves)
    text = "\n".join(
        [
            "def match(r):",
            "    if type(r) is not dict: return None",
            *source.lines,
            f"    return ({leaves}{',' if source.leaves else ''})",
        ]
    )
    namespace: dict[str, Any] = dict(source.constants)
    exec(compile(text, "<fhir_mapping.matchers>", "exec"), namespace)  # noqa: S102
    matcher: Matcher = namespace["match"]
    return matcher


class Matchers:
    """The matcher and plan of each top-level key tuple that has one planned shape only.

    A second planned shape with the same top-level keys makes those keys walked again
    (with the shape key): trying candidates in turn cost more than the walk. Generated
    Encounters have one shape (parse_encounter 25.9 -> 21.2 us); generated Patients have
    ~40 under one key tuple (their numbers of names, identifiers, telecoms, lines...),
    where a list of the 8 newest matchers made parse_patient 4.6x slower."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.max_keys = max_keys
        #: Top-level keys -> (matcher, plan), or None when they have several shapes.
        self._by_keys: dict[tuple[Any, ...], tuple[Matcher, tuple[int, ...]] | None] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_keys)

    def find(self, raw: dict[str, Any]) -> tuple[tuple[int, ...], tuple[Any, ...]] | None:
        """(plan, leaves) if ``raw`` has the one planned shape of its top-level keys."""
        found = self._by_keys.get(tuple(raw))
        if found is not None:
            leaves = found[0](raw)
            if leaves is not None:
                return found[1], leaves
        return None

    def add(self, raw: dict[str, Any], plan: tuple[int, ...]) -> None:
        """``raw`` has a planned shape and matched no matcher: compile its matcher if its
        top-level keys have none (a new shape, or one planned before the matchers were
        last dropped), else give up matching them (they have another shape)."""
        keys = tuple(raw)
        if self._by_keys.get(keys, False) is None:
            return  # given up already (most Patients): no lock
        with self._lock:
            if keys in self._by_keys:
                self._by_keys[keys] = None
                return
            if len(self._by_keys) >= self.max_keys:
                self._by_keys.clear()
        matcher = compile_matcher(raw)
        with self._lock:
            if keys in self._by_keys:
                self._by_keys[keys] = None
            else:
                self._by_keys[keys] = None if matcher is None else (matcher, plan)
