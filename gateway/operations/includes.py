"""What a search of each type reads of other types besides its own rows.

``_include`` and ``_revinclude`` (https://hl7.org/fhir/R4/search.html#include) bring
resources of another type into a search's Bundle; a chained parameter
(``Encounter?patient.family=…``) and ``_has`` (``Patient?_has:Encounter:patient:…``) search
another type to choose the matches. Whoever may search one type may not always search the
other, so every caller of a search (the routes, ``$populate``'s ``x-fhir-query``,
``$export``'s ``_typeFilter``) asks :func:`other_types` which types a query reads and
checks its scopes on each of them; the CapabilityStatement declares the include table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.operations.encounters import CHAINS, INCLUDES
from gateway.operations.search_patient import REVERSE, REVINCLUDES

#: Type searched -> {``_include`` or ``_revinclude``: {value: the type it adds}}.
ADDED_BY: dict[str, dict[str, dict[str, str]]] = {
    "Patient": {"_revinclude": REVINCLUDES},
    "Encounter": {"_include": INCLUDES},
}
#: Type searched -> {reference parameter: the type its chained parameters search}.
CHAINED: dict[str, Mapping[str, str]] = {"Encounter": CHAINS}
#: Type searched -> the types its ``_has`` searches.
REVERSE_CHAINED: dict[str, Mapping[str, frozenset[str]]] = {"Patient": REVERSE}


def other_types(resource_type: str, items: Sequence[tuple[str, str]]) -> list[str]:
    """The types other than its own a search of ``resource_type`` with the query ``items``
    reads (adds, chains to, or reverse-chains from), each once. Values the search does not
    support are left out: the search refuses them (400)."""
    added = ADDED_BY.get(resource_type, {})
    chained = CHAINED.get(resource_type, {})
    reverse = REVERSE_CHAINED.get(resource_type, {})
    found: list[str | None] = []
    for key, value in items:
        if key.startswith("_has:"):
            rtype = key.split(":")[1]
            found.append(rtype if rtype in reverse else None)
        elif "." in key:
            found.append(chained.get(key.partition(".")[0].partition(":")[0]))
        else:
            found.append(added.get(key.partition(":")[0], {}).get(value))
    return list(dict.fromkeys(t for t in found if t is not None and t != resource_type))
