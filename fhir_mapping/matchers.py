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

from fhir_mapping.shapes import DEFAULT_MAX_SHAPES, STRUCTURE_KEYS

#: A compiled matcher: the leaves of a resource of its shape, else None.
Matcher = Callable[[dict[str, Any]], tuple[Any, ...] | None]
#: Top-level key tuples remembered (all dropped when full: a few per source in practice).
DEFAULT_MAX_KEYS = 256
#: Larger resources are walked: their generated code would cost more to compile than
#: the walks it saves.
MAX_POSITIONS = 2000
_SCALARS = frozenset({str, int, float, bool})


#: A step of a matcher: ("check", expression, constant): the expression's value must
#: equal the constant; or ("let", name, expression): bind a name.
_Op = tuple[str, str, Any]


class _Source:
    """A resource's shape as the steps of its matcher, and its leaf expressions. The steps
    after a check depend only on the constants checked before them, so two shapes' steps
    agree up to their first check with another constant (see :class:`ShapeTrees`)."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.leaves: list[str] = []
        self.positions = 0

    def name(self, prefix: str) -> str:
        self.positions += 1
        return f"{prefix}{self.positions}"

    def check(self, expr: str, value: Any) -> None:
        self.ops.append(("check", expr, value))

    def node(self, expr: str, node: dict[str, Any]) -> None:
        """``expr`` holds a dict; check it holds ``node``'s shape, collect its leaves."""
        if self.positions > MAX_POSITIONS:
            raise _TooLarge
        self.check(f"tuple({expr})", tuple(node))
        values = self.name("v")
        self.ops.append(("let", values, f"tuple({expr}.values())"))
        kinds = tuple(map(type, node.values()))
        self.check(f"tuple(map(type, {values}))", kinds)
        for i, (key, value) in enumerate(node.items()):
            at = f"{values}[{i}]"
            kind = kinds[i]
            if key in STRUCTURE_KEYS:
                if value is not None:
                    self.check(at, value)
            elif kind in _SCALARS:
                self.leaves.append(at)
            elif kind is dict:
                self.node(at, value)
            elif kind is list:
                self.array(at, value)

    def array(self, expr: str, items: list[Any]) -> None:
        item_kinds = tuple(map(type, items))
        self.check(f"tuple(map(type, {expr}))", item_kinds)
        if dict not in item_kinds:
            self.leaves.append(f"tuple({expr})")
            return
        for j, item in enumerate(items):
            if type(item) is dict:
                self.node(f"{expr}[{j}]", item)


class _TooLarge(Exception):
    pass


class _Code:
    """The text of a generated ``match(r)`` and its constants."""

    def __init__(self) -> None:
        self.lines = ["def match(r):", "    if type(r) is not dict: return None"]
        self.constants: dict[str, Any] = {}

    def constant(self, value: Any) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def steps(self, ops: list[_Op], pad: str) -> None:
        for kind, first, second in ops:
            if kind == "check":
                self.lines.append(f"{pad}if {first} != {self.constant(second)}: return None")
            else:
                self.lines.append(f"{pad}{first} = {second}")

    def function(self) -> Any:
        namespace: dict[str, Any] = dict(self.constants)
        exec(compile("\n".join(self.lines), "<fhir_mapping.matchers>", "exec"), namespace)  # noqa: S102
        return namespace["match"]


def _leaf_tuple(leaves: list[str]) -> str:
    return f"({', '.join(leaves)}{',' if leaves else ''})"


def compile_matcher(node: dict[str, Any]) -> Matcher | None:
    """The matcher of ``node``'s shape (``node`` must have a shape: shape_of returned),
    or None for a resource too large to be worth one."""
    source = _Source()
    try:
        source.node("r", node)
    except (_TooLarge, RecursionError):
        return None
    code = _Code()
    code.steps(source.ops, "    ")
    code.lines.append(f"    return {_leaf_tuple(source.leaves)}")
    matcher: Matcher = code.function()
    return matcher


class Matchers:
    """The matcher and plan of each top-level key tuple that has one planned shape only.

    A second planned shape with the same top-level keys gives those keys up (to
    :class:`ShapeTrees`): trying candidates in turn cost more than the walk. Generated
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

    def add(self, raw: dict[str, Any], plan: tuple[int, ...]) -> bool:
        """``raw`` has a planned shape and matched no matcher: compile its matcher if its
        top-level keys have none (a new shape, or one planned before the matchers were
        last dropped), else give up matching them (they have another shape). True when
        its keys are given up."""
        keys = tuple(raw)
        if self._by_keys.get(keys, False) is None:
            return True  # given up already (most Patients): no lock
        with self._lock:
            if keys in self._by_keys:
                self._by_keys[keys] = None
                return True
            if len(self._by_keys) >= self.max_keys:
                self._by_keys.clear()
        matcher = compile_matcher(raw)
        with self._lock:
            if keys in self._by_keys:
                self._by_keys[keys] = None
            else:
                self._by_keys[keys] = None if matcher is None else (matcher, plan)
            return self._by_keys[keys] is None


#: Planned shapes kept per top-level key tuple by :class:`ShapeTrees` (generated Patients
#: have up to 47 under one key tuple; past this the others are walked).
MAX_TREE_SHAPES = 256
#: Branch levels of a generated tree (Python refuses ~100 levels of indentation).
MAX_TREE_DEPTH = 40
#: A tree is compiled again once resources of its shapes not compiled yet were walked
#: this many times per line of its compiled code: compiling costs ~35 us a line, a walk
#: ~12 us more than the tree (so the recompilations cost at most ~the walks they save).
WALKS_PER_LINE = 3


class _Branch:
    """A node of a shape tree: steps run in order, then either the end of one shape
    (its leaf expressions and plan) or a branch on the value of ``at``."""

    __slots__ = ("at", "children", "end", "ops")

    def __init__(self, ops: list[_Op], end: tuple[list[str], tuple[int, ...]] | None) -> None:
        self.ops = ops
        self.end = end
        self.at: str | None = None
        self.children: dict[Any, _Branch] = {}

    def insert(self, ops: list[_Op], end: tuple[list[str], tuple[int, ...]]) -> None:
        """Add a shape's steps (not already in the tree). The steps of two shapes agree up
        to a check of the same expression against other constants: the branch point."""
        node, i = self, 0
        while True:
            k = 0
            while k < len(node.ops) and i + k < len(ops) and node.ops[k] == ops[i + k]:
                k += 1
            if k < len(node.ops):
                if i + k >= len(ops):
                    raise _TooLarge  # not a branch point: never built
                mine, theirs = node.ops[k], ops[i + k]
                if mine[0] != "check" or theirs[:2] != mine[:2]:
                    raise _TooLarge  # not a branch point: never built
                rest = _Branch(node.ops[k + 1 :], node.end)
                rest.at, rest.children = node.at, node.children
                node.ops, node.end, node.at = node.ops[:k], None, mine[1]
                node.children = {mine[2]: rest, theirs[2]: _Branch(ops[i + k + 1 :], end)}
                return
            i += k
            if node.at is None or i >= len(ops) or ops[i][:2] != ("check", node.at):
                raise _TooLarge  # the same shape, or not a branch point: never built
            child = node.children.get(ops[i][2])
            if child is None:
                node.children[ops[i][2]] = _Branch(ops[i + 1 :], end)
                return
            node, i = child, i + 1

    def emit(self, code: _Code, depth: int) -> None:
        if depth > MAX_TREE_DEPTH:
            raise _TooLarge
        pad = "    " * depth
        code.steps(self.ops, pad)
        if self.end is not None:
            leaves, plan = self.end
            code.lines.append(f"{pad}return {code.constant(plan)}, {_leaf_tuple(leaves)}")
            return
        value = f"x{depth}"
        code.lines.append(f"{pad}{value} = {self.at}")
        for constant, child in self.children.items():
            code.lines.append(f"{pad}if {value} == {code.constant(constant)}:")
            child.emit(code, depth + 1)
        code.lines.append(f"{pad}return None")


class _Tree:
    """The planned shapes of one top-level key tuple and their compiled tree."""

    def __init__(self) -> None:
        self.root: _Branch | None = None
        self.shapes: set[tuple[Any, ...]] = set()
        #: The compiled tree: (plan, leaves) of a resource of a compiled shape, else None.
        self.match: Callable[[dict[str, Any]], Any] | None = None
        self.lines = 0
        self.compiled = 0
        self.walks = 0
        self.full = False

    def add(self, raw: dict[str, Any], shape: tuple[Any, ...], plan: tuple[int, ...]) -> None:
        if shape not in self.shapes and not self.full:
            source = _Source()
            try:
                source.node("r", raw)
                if self.root is None:
                    self.root = _Branch(source.ops, (source.leaves, plan))
                else:
                    self.root.insert(source.ops, (source.leaves, plan))
            except (_TooLarge, RecursionError):
                self.full = True  # the tree keeps the shapes it has
                return
            self.shapes.add(shape)
            self.full = len(self.shapes) >= MAX_TREE_SHAPES
        if len(self.shapes) == self.compiled or self.root is None:
            return  # walked although compiled: a tree dropped by the bound, or too deep
        self.walks += 1
        if self.walks >= WALKS_PER_LINE * self.lines:
            self._compile()

    def _compile(self) -> None:
        assert self.root is not None
        code = _Code()
        try:
            self.root.emit(code, 1)
        except _TooLarge:
            self.full = True
            self.compiled = len(self.shapes)  # the last compiled tree stays
            return
        self.match = code.function()
        self.lines = len(code.lines)
        self.compiled = len(self.shapes)
        self.walks = 0


class ShapeTrees:
    """The top-level key tuples :class:`Matchers` gave up (several planned shapes): one
    generated function per key tuple, a decision tree over all of its planned shapes.

    It runs a matcher's checks once for the steps the shapes share and, where they part
    (a list of one identifier or two, a name with a ``text`` or not...), compares the
    value checked with each shape's constant in turn; it returns the plan and the leaves
    of the one shape the resource has, else None (the resource is walked as before).
    All shapes compiled (callgrind, 2000 generated Patients, 8 key tuples): 87k
    instructions a Patient instead of 126k for the walk and the plan lookup. A tree is
    compiled again only once its walks paid for it (:data:`WALKS_PER_LINE`), so early
    on most resources are still walked: ``check_resource`` over the 26,069 Patients of
    the 25k ingest data, process time (load ~7, two interleaved runs each), first pass
    74.5-76.1 -> 67.9-71.1 us, second pass 67.0-68.9 -> 56.3-59.1 us; 94% of the first
    pass found by a matcher or a tree."""

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, max_shapes: int = DEFAULT_MAX_SHAPES
    ) -> None:
        self.max_keys = max_keys
        self.max_shapes = max_shapes
        self._trees: dict[tuple[Any, ...], _Tree] = {}
        #: Shapes held by all trees (all dropped past ``max_shapes``, as the matchers are).
        self._shapes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._trees)

    def find(self, raw: dict[str, Any]) -> tuple[tuple[int, ...], tuple[Any, ...]] | None:
        """(plan, leaves) if ``raw`` has a compiled shape of its top-level keys."""
        tree = self._trees.get(tuple(raw))
        if tree is not None and tree.match is not None:
            found: tuple[tuple[int, ...], tuple[Any, ...]] | None = tree.match(raw)
            return found
        return None

    def add(self, raw: dict[str, Any], shape: tuple[Any, ...], plan: tuple[int, ...]) -> None:
        """``raw`` has the planned ``shape`` (its shape key) and was walked: keep the shape
        in its keys' tree, compiled again once its walks paid for it."""
        keys = tuple(raw)
        with self._lock:
            if self._shapes >= self.max_shapes:
                self._trees.clear()
                self._shapes = 0
            tree = self._trees.get(keys)
            if tree is None:
                if len(self._trees) >= self.max_keys:
                    self._trees.clear()
                    self._shapes = 0
                tree = self._trees[keys] = _Tree()
            before = len(tree.shapes)
            tree.add(raw, shape, plan)
            self._shapes += len(tree.shapes) - before
