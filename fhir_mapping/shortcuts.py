"""Shortcuts: values a field's validator surely accepts, recognised without calling it.

A plan checks each primitive value with its field's pydantic validator, memoized, but
the values of a sync seldom repeat (ids, references, identifier values, phone numbers,
birth dates, encounter periods): most are verdict misses. For the commonest FHIR types
a cheaper test tells the values the validator surely accepts; it never refuses one:
anything else, a refused value included, still goes to the validator (and a field with
more constraints than its type's gets no shortcut). tests/fhir_mapping/test_c_fastpath.py
holds each shortcut to its validator.

- ``date`` / ``dateTime`` (not ``instant``): a full date, or for ``dateTime`` a date with
  a time to the second and a zone, that is a calendar date (~0.8-1.1 us instead of
  3-11 us in fhir_core's Python wrapper);
- ``id``: ASCII letters, digits, "-" and "." up to 64 (while fhir_core's constraints
  are the defaults);
- ``string``: a string with a character that is not white space and no lone surrogate
  (pydantic's pattern ``[ \\r\\n\\t\\S]+`` searches for one; a surrogate cannot cross
  into Rust).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, get_args, get_origin

import fhir_core.constraints
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import Date as FhirDate
from fhir_core.types import DateTime as FhirDateTime
from fhir_core.types import Id as FhirId
from fhir_core.types import String as FhirString

#: The usual full forms of a FHIR date and dateTime: ASCII digits, no fraction of a
#: second, no leap second, a time zone within the FHIR pattern's +-14:00.
_FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FULL_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)"
)
#: fhir_core's default id constraints, under which _PLAIN_ID is surely an id.
_DEFAULT_ID_PATTERN = r"^[A-Za-z0-9\-.]+$"
_PLAIN_ID_LENGTH = 64
_PLAIN_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _parses(parse: Callable[[str], Any], value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _surely_date(value: Any) -> bool:
    """A calendar date written YYYY-MM-DD (year 0000 is none: ``date`` refuses it)."""
    return (
        type(value) is str
        and _FULL_DATE.fullmatch(value) is not None
        and _parses(date.fromisoformat, value)
    )


def _surely_date_time(value: Any) -> bool:
    """A full date, or a full date with a time to the second and a zone (Python 3.11's
    ``fromisoformat`` reads "Z"), whose date is a calendar date."""
    if type(value) is not str:
        return False
    if _FULL_DATE_TIME.fullmatch(value) is not None:
        return _parses(datetime.fromisoformat, value)
    return _FULL_DATE.fullmatch(value) is not None and _parses(date.fromisoformat, value)


def _surely_id(value: Any) -> bool:
    return type(value) is str and _PLAIN_ID.fullmatch(value) is not None


def _surely_string(value: Any) -> bool:
    """Python's white space includes all of Unicode's (which ``\\S`` excludes), so a
    character ``isspace`` refuses is one the pattern finds."""
    return (
        type(value) is str
        and value != ""
        and not value.isspace()
        and (value.isascii() or _SURROGATE.search(value) is None)
    )


def _id_shortcut() -> Callable[[Any], bool] | None:
    """_surely_id while fhir_core's id constraints (read when its models were built,
    patched only before) are the defaults or looser."""
    pattern = getattr(fhir_core.constraints, "TYPES_ID_PATTERN", _DEFAULT_ID_PATTERN)
    max_length = getattr(fhir_core.constraints, "TYPES_ID_MAX_LENGTH", None)
    if pattern not in (_DEFAULT_ID_PATTERN, None):
        return None
    if max_length is not None and max_length < _PLAIN_ID_LENGTH:
        return None
    return _surely_id


#: By the exact fhir_core type of a field (Instant, a DateTime subclass, needs a time).
_SHORTCUTS: dict[type, Callable[[Any], bool] | None] = {
    FhirDate: _surely_date,
    FhirDateTime: _surely_date_time,
    FhirId: _id_shortcut(),
    FhirString: _surely_string,
}


def shortcut_of(model: type[FHIRAbstractModel], name: str) -> Callable[[Any], bool] | None:
    """The shortcut of a field annotated ``Annotated[..., T()]`` (optionally Optional)
    with exactly one fhir_core type ``T`` that has one, and no constraints of its own."""
    info = model.model_fields[name]
    if info.metadata:
        return None
    for arg in (info.annotation, *get_args(info.annotation)):
        if get_origin(arg) is Annotated:
            metadata = get_args(arg)[1:]
            if len(metadata) == 1:
                return _SHORTCUTS.get(type(metadata[0]))
            return None
    return None
