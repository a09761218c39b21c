"""Token search inside a stored FHIR resource's JSON: "has an element like this".

An Encounter's identifiers and types are searched in the resource askonce keeps
(``encounter.resource``) rather than in token rows written at ingest: the ingest writes
an Encounter in one statement per page at 10k+ a second, and a token table would be a
second insert per Encounter for two rarely used parameters. On PostgreSQL the resource
is JSONB and the condition is a containment (``@>``) that GIN expression indexes on
``resource -> 'identifier'`` and ``resource -> 'type'`` answer (migration 0015); on
SQLite, the embedded default, it is an ``EXISTS`` over ``json_each``: a scan, cheap
at the embedded default's volumes and narrowed by any other criterion of the search.

:class:`HasElement` is one construct compiled per dialect, so a search builds its
conditions without knowing the database (a Patient search's ``_has`` too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Boolean, ColumnElement, literal, not_, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler


class HasElement(ColumnElement[bool]):
    """True when the JSON array ``path`` of ``column`` (the elements of the arrays
    ``nested`` inside its elements, for a CodeableConcept's codings; a dotted path
    through objects, ``type.coding`` for an Identifier's type) has an element whose
    keys in ``fields`` equal their values (a None value: the key is absent). No
    ``fields``: the array has any element at all. ``fields`` a string: an element that is
    that string (a HumanName's ``given``, an Address's ``line``). ``outer``, with
    ``nested``: what the element of ``path`` holding that nested one must hold too (an
    Identifier's ``value`` for a coding of its type)."""

    type = Boolean()
    inherit_cache = False  # its values are bound at compile time

    def negated(self) -> ColumnElement[bool]:
        """No such element: NOT this (NULL on PostgreSQL without the array), or no
        array at all."""
        return or_(not_(self), not_(HasElement(self.column, self.path, {})))

    def __init__(
        self,
        column: Any,
        path: str,
        fields: Mapping[str, str | None] | str,
        nested: str | None = None,
        outer: Mapping[str, str] | None = None,
    ) -> None:
        self.column = column
        self.path = path
        self.fields: dict[str, str | None] | str = (
            fields if isinstance(fields, str) else dict(fields)
        )
        self.nested = nested
        self.outer = dict(outer or {})
        if self.outer and nested is None:
            raise ValueError("outer fields need a nested array")
        if self.outer and isinstance(self.fields, dict) and None in self.fields.values():
            raise ValueError("outer fields and absent keys are not tested together")


def identifier_of_type(column: Any, system: str, code: str, value: str) -> HasElement:
    """An identifier of ``value`` whose type has the coding ``system|code`` (what
    ``identifier:of-type`` asks, https://hl7.org/fhir/R4/search.html#token)."""
    return HasElement(
        column, "identifier", {"system": system, "code": code}, "type.coding", {"value": value}
    )


def _bound(compiler: SQLCompiler, value: str, **kw: Any) -> str:
    return compiler.process(literal(value), **kw)


@compiles(HasElement, "postgresql")
def _postgresql(element: HasElement, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    array = f"({column} -> {_bound(compiler, element.path, **kw)})"
    fields = element.fields
    if not fields:
        return (
            f"COALESCE(jsonb_typeof({array}) = 'array' AND jsonb_array_length({array}) > 0, false)"
        )
    present: Any = fields
    absent: list[str] = []
    if not isinstance(fields, str):
        present = {key: value for key, value in fields.items() if value is not None}
        absent = [key for key, value in fields.items() if value is None]
    pattern: Any = [present]
    if element.nested is not None:
        inner: Any = pattern
        for step in reversed(element.nested.split(".")):
            inner = {step: inner}
        pattern = [{**element.outer, **inner}]
    sql = f"({array} @> CAST({_bound(compiler, json.dumps(pattern), **kw)} AS JSONB))"
    if absent:  # containment cannot say "without": a JSON path over the few it found
        steps = f"$.{element.path}[*]" + (f".{element.nested}[*]" if element.nested else "")
        tests = [f"@.{key} == ${key}" for key in present] + [f"!exists(@.{key})" for key in absent]
        query = f"{steps} ? ({' && '.join(tests)})"
        variables = _bound(compiler, json.dumps(present), **kw)
        sql += (
            f" AND jsonb_path_exists({column}, CAST({_bound(compiler, query, **kw)} AS JSONPATH),"
            f" CAST({variables} AS JSONB))"
        )
    # NULL where the resource has no such array (a plain containment, for the index):
    # a negation adds "or no such array" (:meth:`HasElement.negated`).
    return f"({sql})"


@compiles(HasElement, "sqlite")
def _sqlite(element: HasElement, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    sources = f"json_each({column}, {_bound(compiler, '$.' + element.path, **kw)}) AS outer_"
    alias = "outer_"
    if element.nested is not None:
        nested = _bound(compiler, "$." + element.nested, **kw)
        sources += f", json_each(outer_.value, {nested}) AS inner_"
        alias = "inner_"
    tests = ["1 = 1"]
    for key, value in element.outer.items():
        extracted = f"json_extract(outer_.value, {_bound(compiler, '$.' + key, **kw)})"
        tests.append(f"{extracted} = {_bound(compiler, value, **kw)}")
    if isinstance(element.fields, str):  # the element itself, a JSON string
        value = _bound(compiler, element.fields, **kw)
        tests += [f"{alias}.type = 'text'", f"{alias}.value = {value}"]
    else:
        for key, wanted in element.fields.items():
            extracted = f"json_extract({alias}.value, {_bound(compiler, '$.' + key, **kw)})"
            if wanted is None:
                tests.append(f"{extracted} IS NULL")
            else:
                tests.append(f"{extracted} = {_bound(compiler, wanted, **kw)}")
    return f"EXISTS (SELECT 1 FROM {sources} WHERE {' AND '.join(tests)})"
