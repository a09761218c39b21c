"""What a search of each type may add to its searchset besides its matches.

``_include`` and ``_revinclude`` (https://hl7.org/fhir/R4/search.html#include) bring
resources of another type into a search's Bundle. Whoever may search one type may not
always search the other, so every caller of a search (the routes, ``$populate``'s
``x-fhir-query``) asks :func:`included_types` which types a query adds and checks its
scopes on each of them; the CapabilityStatement declares the same table.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.operations.encounters import INCLUDES
from gateway.operations.search_patient import REVINCLUDES

#: Type searched -> {``_include`` or ``_revinclude``: {value: the type it adds}}.
ADDED_BY: dict[str, dict[str, dict[str, str]]] = {
    "Patient": {"_revinclude": REVINCLUDES},
    "Encounter": {"_include": INCLUDES},
}


def included_types(resource_type: str, items: Sequence[tuple[str, str]]) -> list[str]:
    """The types a search of ``resource_type`` with the query ``items`` adds, each once.
    Values the search does not support are left out: the search refuses them (400)."""
    added = ADDED_BY.get(resource_type, {})
    found = (added.get(key.partition(":")[0], {}).get(value) for key, value in items)
    return list(dict.fromkeys(t for t in found if t is not None))
