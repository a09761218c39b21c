"""Shape plans: re-validating a resource by its primitive values once its shape is known valid.

``fhir.resources`` spends most of a ``model_validate`` in per-model Python validators
(``reject_null_complex_elements``, required primitives, one-of-many choice types) whose
verdict depends only on the resource's *shape*, not on its values:

- which keys each JSON object holds, in order, and which are objects, arrays or nulls;
- how long each array is and where its nulls sit;
- the JSON type (``str``/``int``/``float``/``bool``) of every primitive;
- the values that select a model: ``resourceType`` (``resource_type``), which pick the
  class of a ``contained`` resource and are checked against every object's model.

What the shape does not fix is whether each primitive value is acceptable to the field
it belongs to (an ``id`` pattern, a ``dateTime``, a ``code`` without double spaces...).

So a resource whose shape has been seen valid once needs only its primitive values
checked, each by the pydantic validator of its field: :func:`derive_plan` walks the
validated model instance beside the JSON and records, in :func:`shape_of`'s order, one
*checker* per primitive position (a ``TypeAdapter`` of the field's annotation with the
owning model's config, the type of the value at that position baked in). A primitive
array (``given``, ``line``, the null placeholders of a ``_given`` sibling...) is one
position, validated whole. A checker also holds the required binding of its field, if
the caller gives one, and accepts the values its type surely accepts (a full calendar
date, a plain id, a string with a visible character) without calling the validator
(see :mod:`fhir_mapping.shortcuts`). Verdicts are memoized per (checker, value) in a bounded
dict: codes, systems and dates repeat a lot; a plan's positions with a shortcut are
decided by it before the memo is asked (their values are mostly one resource's own).

Anything this module does not recognise raises :class:`Unplannable`; the caller then
validates the resource with the full model, which stays the authority.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import compress
from operator import call, itemgetter, not_
from typing import Annotated, Any

from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import TypeAdapter, ValidationError
from pydantic.errors import PydanticUserError

from fhir_mapping.shortcuts import shortcut_of

#: Keys whose value selects the model of an object (popped by ``FHIRAbstractModel.__init__``).
STRUCTURE_KEYS = frozenset({"resourceType", "resource_type"})
#: Distinct shapes remembered (LRU): a few per resource type in practice.
DEFAULT_MAX_SHAPES = 2048
#: Memoized verdicts of (checker, value), in two generations (see :class:`Checkers`).
DEFAULT_MAX_VERDICTS = 32768
#: Ends an object or an array in a shape.
_END = Ellipsis
_SCALARS = (str, int, float, bool)
_LEAF_ITEM_TYPES = frozenset({str, int, float, bool, type(None)})
#: What a field validator may raise besides a ValidationError (as in validate_resource).
_VALIDATOR_ERRORS = (
    ValidationError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    RecursionError,
)


class Unplannable(Exception):
    """The resource or its shape is outside what a plan covers: validate it in full."""


def shape_of(node: dict[str, Any], tokens: list[Any], leaves: list[Any]) -> None:
    """Append the shape tokens of a JSON object to ``tokens`` and its primitive
    positions' values (a scalar, or a whole primitive array as a tuple) to ``leaves``.

    A Python loop over the keys, strings first (most values), structure keys looked for
    only in an object that has one, an array's item types by a C loop: 11.9 us a Patient
    instead of 13.6. Building each object's keys and types as tuples by C loops instead
    (or memoizing what to do per object layout) measured slower, ~15 us: its ~10 objects
    hold 2-5 keys each."""
    append = tokens.append
    leaf = leaves.append
    structured = "resourceType" in node or "resource_type" in node
    for key, value in node.items():
        append(key)
        kind = type(value)
        if structured and key in STRUCTURE_KEYS:
            if value is not None and kind not in _SCALARS:
                raise Unplannable(key)
            append((kind, value))
        elif kind is str:
            append(str)
            leaf(value)
        elif kind is dict:
            append(dict)
            shape_of(value, tokens, leaves)
            append(_END)
        elif kind is list:
            item_types = tuple(map(type, value))
            if dict in item_types:
                append(list)
                for item in value:
                    if type(item) is dict:
                        append(dict)
                        shape_of(item, tokens, leaves)
                        append(_END)
                    elif item is None:
                        append(None)
                    else:
                        raise Unplannable(key)
                append(_END)
            elif _LEAF_ITEM_TYPES.issuperset(item_types):
                append(item_types)
                leaf(tuple(value))
            else:
                raise Unplannable(key)
        elif value is None:
            append(None)
        elif kind is int or kind is float or kind is bool:
            append(kind)
            leaf(value)
        else:
            raise Unplannable(key)


_FIELD_KEYS: dict[type[FHIRAbstractModel], dict[str, str]] = {}
_FIELD_VALIDATORS: dict[tuple[type[FHIRAbstractModel], str], Callable[[Any], Any]] = {}


def _field_keys(model: type[FHIRAbstractModel]) -> dict[str, str]:
    """JSON key -> field name: aliases, and (``populate_by_name``) the names themselves."""
    found = _FIELD_KEYS.get(model)
    if found is not None:
        return found
    keys: dict[str, str] = {}
    if model.model_config.get("populate_by_name"):
        keys.update((name, name) for name in model.model_fields)
    for name, info in model.model_fields.items():
        if info.alias:
            keys[info.alias] = name
    _FIELD_KEYS[model] = keys
    return keys


def _field_validator(model: type[FHIRAbstractModel], name: str) -> Callable[[Any], Any]:
    """``validate_python`` of a TypeAdapter of the field's annotation (its metadata put
    back), under the owning model's config (the model validates the field with that schema)."""
    found = _FIELD_VALIDATORS.get((model, name))
    if found is not None:
        return found
    info = model.model_fields[name]
    annotation: Any = info.annotation
    if info.metadata:
        annotation = Annotated[(annotation, *info.metadata)]
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation, config=model.model_config)
    except PydanticUserError:
        # A type with a config of its own (a model) refuses another one.
        adapter = TypeAdapter(annotation)
    # The core validator itself: TypeAdapter.validate_python adds a Python frame per call.
    validate = adapter.validator.validate_python
    _FIELD_VALIDATORS[(model, name)] = validate
    return validate


#: Required bindings a plan checks with the field's validator: (model, field) -> codes.
Bindings = dict[tuple[type[FHIRAbstractModel], str], frozenset[str]]


class Checkers:
    """Checker ids: one per (model, field, JSON type of the value), and their verdicts.

    A field in ``bindings`` also needs its value in the codes given there (the required
    bindings ``fhir_mapping.validate`` checks besides the models), so that a plan alone
    decides a valid resource. A binding on a model met at other paths than the checked
    ones is only stricter: a value it refuses goes through the full checks.

    Verdicts are kept in two generations of at most ``max_verdicts / 2`` each: when the
    young one is full it becomes the old one (the previous old one is dropped), and a
    verdict found in the old one moves back to the young one. Values that repeat (codes,
    systems, dates) stay; values seen once (ids) age out.

    With ``shortcut_first`` (as :class:`Plans` makes them), the positions whose checker
    has a shortcut and no binding are decided by their shortcuts first, without the
    memo: most of their values are one resource's own (ids, identifier values, phone
    numbers, birth dates), each a memo miss that was checked, stored and evicted again,
    pushing the codes out of the young generation. Only when a shortcut does not accept
    its value are all positions looked up as before, so the verdict is the same (a
    shortcut never accepts what its validator refuses)."""

    def __init__(
        self,
        max_verdicts: int = DEFAULT_MAX_VERDICTS,
        bindings: Bindings | None = None,
        *,
        shortcut_first: bool = False,
    ) -> None:
        self.ids: dict[tuple[Any, ...], int] = {}
        self.validators: list[Callable[[Any], Any]] = []
        self.codes: list[frozenset[str] | None] = []
        self.shortcuts: list[Callable[[Any], bool] | None] = []
        self.bindings: Bindings = bindings or {}
        self.verdicts: dict[tuple[int, Any], bool] = {}
        self.old_verdicts: dict[tuple[int, Any], bool] = {}
        self.generation_size = max(1, max_verdicts // 2)
        self.shortcut_first = shortcut_first
        #: Plan -> its shortcut positions' getter and shortcuts, the other positions'
        #: getter and checkers (empty: no shortcut position); dropped when full.
        self._splits: dict[tuple[int, ...], _Split | tuple[()]] = {}

    def __len__(self) -> int:
        """How many verdicts are memoized."""
        return len(self.verdicts) + len(self.old_verdicts)

    def checker(self, model: type[FHIRAbstractModel], name: str, kind: Any) -> int:
        key = (model, name, kind)
        found = self.ids.get(key)
        if found is None:
            found = len(self.validators)
            self.validators.append(_field_validator(model, name))
            self.codes.append(self.bindings.get((model, name)))
            self.shortcuts.append(shortcut_of(model, name))
            self.ids[key] = found
        return found

    def accept(self, checkers: tuple[int, ...], leaves: Sequence[Any]) -> bool:
        """True when every leaf (as :func:`shape_of` gives them: hashable, primitive
        arrays as tuples) passes its checker (memoized; see ``shortcut_first``)."""
        if self.shortcut_first and len(checkers) == len(leaves):
            split = self._splits.get(checkers)
            if split is None:
                split = self._split(checkers)
            if split:
                shortcut_leaves, shortcuts, other_leaves, others = split
                if all(map(call, shortcuts, shortcut_leaves(leaves))):
                    return self._accept_memoized(others, other_leaves(leaves))
        return self._accept_memoized(checkers, leaves)

    def _split(self, checkers: tuple[int, ...]) -> _Split | tuple[()]:
        first: list[int] = []
        shortcuts: list[Callable[[Any], bool]] = []
        for i, checker in enumerate(checkers):
            shortcut = self.shortcuts[checker]
            if shortcut is not None and self.codes[checker] is None:
                first.append(i)
                shortcuts.append(shortcut)
        split: _Split | tuple[()] = ()
        if first:
            chosen = set(first)
            rest = [i for i in range(len(checkers)) if i not in chosen]
            split = (
                _getter(first),
                tuple(shortcuts),
                _getter(rest),
                tuple(checkers[i] for i in rest),
            )
        if len(self._splits) >= DEFAULT_MAX_SHAPES:
            self._splits.clear()
        self._splits[checkers] = split
        return split

    def _accept_memoized(self, checkers: Sequence[int], leaves: Sequence[Any]) -> bool:
        """:meth:`accept` by the memo alone.

        Every verdict looked up by C loops first (~70% of a warm Patient's positions
        are memoized codes, systems and dates); only the others are decided one by one."""
        if len(checkers) != len(leaves):
            return False
        verdicts = self.verdicts
        # The keys are not kept: zip reuses its tuple while nothing else holds it, and
        # the few misses get theirs again from a second zip.
        found = list(map(verdicts.get, zip(checkers, leaves, strict=True)))
        if all(found):
            return True
        if False in found:
            return False  # a memoized refusal
        old = self.old_verdicts
        for key in compress(zip(checkers, leaves, strict=True), map(not_, found)):
            # Not found young (a key met twice in one resource is decided twice alike).
            verdict = old.get(key)
            if verdict is None:
                verdict = self._run(*key)
            if len(verdicts) >= self.generation_size:
                old = self.old_verdicts = verdicts
                verdicts = self.verdicts = {}
            verdicts[key] = verdict
            if not verdict:
                return False
        return True

    def _run(self, checker: int, value: Any) -> bool:
        codes = self.codes[checker]
        if codes is not None and value not in codes:
            return False
        shortcut = self.shortcuts[checker]
        if shortcut is not None and shortcut(value):
            return True
        try:
            # A primitive array is a tuple in the leaves; its field validates a list.
            result = self.validators[checker](list(value) if type(value) is tuple else value)
        except _VALIDATOR_ERRORS:
            return False
        # A null is decided by the shape; a value the validator turned into null is not.
        return result is not None


#: A plan split by :meth:`Checkers.accept`: the getter of its shortcut positions' leaves
#: and their shortcuts, the getter of the other positions' leaves and their checkers.
_Split = tuple[
    Callable[[Sequence[Any]], Sequence[Any]],
    tuple[Callable[[Any], bool], ...],
    Callable[[Sequence[Any]], Sequence[Any]],
    tuple[int, ...],
]


def _getter(positions: list[int]) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """The items of a sequence at ``positions``, as a sequence (itemgetter returns a lone
    item bare)."""
    if len(positions) > 1:
        return itemgetter(*positions)
    if positions:
        only = positions[0]
        return lambda items: (items[only],)
    return lambda items: ()


def derive_plan(
    model: type[FHIRAbstractModel],
    node: dict[str, Any],
    instance: FHIRAbstractModel,
    checkers: Checkers,
) -> tuple[int, ...]:
    """The checker of every primitive position of ``node`` (validated into ``instance``),
    in :func:`shape_of`'s order."""
    out: list[int] = []
    _plan(model, node, instance, checkers, out)
    return tuple(out)


def _plan(
    model: type[FHIRAbstractModel],
    node: dict[str, Any],
    instance: Any,
    checkers: Checkers,
    out: list[int],
) -> None:
    if type(instance) is not model:
        raise Unplannable(model.__name__)
    keys = _field_keys(model)
    seen: set[str] = set()
    for key, value in node.items():
        name = keys.get(key)
        if key in STRUCTURE_KEYS:
            if name is not None:
                raise Unplannable(key)
            continue
        if name is None or name in seen:
            raise Unplannable(key)
        seen.add(name)
        kind = type(value)
        if kind in _SCALARS:
            out.append(checkers.checker(model, name, kind))
        elif kind is dict:
            nested = getattr(instance, name, None)
            if not isinstance(nested, FHIRAbstractModel):
                raise Unplannable(key)
            _plan(type(nested), value, nested, checkers, out)
        elif kind is list and any(type(item) is dict for item in value):
            items = getattr(instance, name, None)
            if not isinstance(items, list) or len(items) != len(value):
                raise Unplannable(key)
            for item, validated in zip(value, items, strict=True):
                if type(item) is dict:
                    if not isinstance(validated, FHIRAbstractModel):
                        raise Unplannable(key)
                    _plan(type(validated), item, validated, checkers, out)
                elif validated is not None:
                    raise Unplannable(key)
        elif kind is list:
            out.append(checkers.checker(model, name, tuple([type(item) for item in value])))


class Plans:
    """Plans by shape (LRU, bounded), and the checkers they use."""

    def __init__(
        self, max_shapes: int = DEFAULT_MAX_SHAPES, bindings: Bindings | None = None
    ) -> None:
        self.max_shapes = max_shapes
        self.checkers = Checkers(bindings=bindings, shortcut_first=True)
        #: Shape -> checker ids, or None for a shape no plan covers.
        self._plans: OrderedDict[tuple[Any, ...], tuple[int, ...] | None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, shape: tuple[Any, ...]) -> tuple[int, ...] | bool | None:
        """The plan of ``shape``; None if no plan covers it; False if it is not known."""
        with self._lock:
            plan = self._plans.get(shape, False)
            if plan is not False:
                self._plans.move_to_end(shape)
            return plan

    def put(self, shape: tuple[Any, ...], plan: tuple[int, ...] | None) -> None:
        with self._lock:
            self._plans[shape] = plan
            self._plans.move_to_end(shape)
            while len(self._plans) > self.max_shapes:
                self._plans.popitem(last=False)
