"""Blocking: the keys under which a record is filed, so candidates are found without a scan.

Two records are compared only when they share a key. Keys are built from the normalized
features (phonetic family name + birth year, given name + birth date, phone, email,
identifiers, postal code + birth date, address line + postal code or city, birth date
with day and month transposed…), hashed so that the ``block_key`` table holds no readable
patient data. Each key starts with a short kind prefix ("ph:", "id:"…) so that statistics
can be kept per kind.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import chain

from mpi.features import MatchFeatures

#: Bytes of the blake2b digest of a key (80 bits: collisions are irrelevant at any scale).
KEY_DIGEST_BYTES = 10
#: Bytes of the digest that make the advisory-lock id (a signed 64-bit integer).
LOCK_ID_BYTES = 8
#: Identifier halves shorter than this are not filed (too many records share them).
MIN_IDENTIFIER_HALF = 3

#: An empty hash with the keys' parameters, copied for each key: a new
#: ``blake2b(data, digest_size=…)`` per key (its arguments parsed, its state set up)
#: took about twice as long as a copy of this one (see :func:`_hash`).
_EMPTY_KEY_HASH = hashlib.blake2b(digest_size=KEY_DIGEST_BYTES)


def _hash(kind: str, *parts: object) -> str:
    # The digest of blake2b(text.encode(), digest_size=KEY_DIGEST_BYTES), from a copy of
    # the empty hash: 1.1-1.5 -> 0.66 us per hash alone (timeit); block_keys of the 2090
    # records of a 2k ingest (28,929 keys), per key: 12.3k -> 11.3k callgrind
    # instructions, 3.56-3.73 -> 3.22-3.27 us of process time (best of 7, loaded machine).
    text = "\x1f".join(map(str, parts))  # map, not a generator: 9% fewer instructions
    digest = _EMPTY_KEY_HASH.copy()
    digest.update(text.encode())
    return f"{kind}:{digest.hexdigest()}"


def block_keys(f: MatchFeatures) -> list[str]:
    """Every blocking key of one record (hashed, de-duplicated, in a stable order)."""
    keys: list[str] = []
    date = f.birth_date
    for name in f.names:
        if name.family_phonetic and f.birth_year is not None:
            keys.append(_hash("fy", name.family_phonetic, f.birth_year))
        if name.family_phonetic and f.birth_year is not None and f.birth_month and f.birth_day:
            low, high = sorted((f.birth_month, f.birth_day))
            keys.append(_hash("tr", name.family_phonetic, f.birth_year, low, high))
        if date:
            keys.extend(_hash("gd", key, date) for key in sorted(name.given_keys))
            if name.given_phonetic and name.family_phonetic:
                pair = sorted((name.given_phonetic, name.family_phonetic))
                keys.append(_hash("sw", *pair, date))
        if name.given_phonetic and name.family_phonetic:
            keys.append(_hash("gf", name.given_phonetic, name.family_phonetic))
        for _line, postal, _city in f.addresses:
            if postal and name.family_phonetic:
                keys.append(_hash("fp", name.family_phonetic, postal))
            if postal and name.given_phonetic:
                keys.append(_hash("gp", name.given_phonetic, postal))
    if date:
        keys.append(_hash("bd", date))
    keys.extend(_hash("ph", phone) for phone in sorted(f.phones))
    keys.extend(_hash("em", email) for email in sorted(f.emails))
    for system, value in sorted(f.strong_ids | f.other_ids | {("ssn", v) for v in f.ssns}):
        keys.append(_hash("id", system, value))
        # One typo leaves one half intact: file the halves too.
        half = len(value) // 2
        if half >= MIN_IDENTIFIER_HALF:
            keys.append(_hash("ih", system, "head", value[:half]))
            keys.append(_hash("ih", system, "tail", value[half:]))
    for line, postal, city in f.addresses:
        if postal and date:
            keys.append(_hash("pd", postal, date))
        if postal and line:
            keys.append(_hash("ad", postal, line))
        if city and line:  # the same house when the postal code was mistyped
            keys.append(_hash("ac", city, line))
    return list(dict.fromkeys(keys))


def lock_ids(keys: Iterable[str]) -> list[int]:
    """Advisory-lock ids (signed 64-bit) of block keys, sorted so lockers never deadlock."""
    ids = set()
    for key in keys:
        raw = bytes.fromhex(key.split(":", 1)[1])[:LOCK_ID_BYTES]
        ids.add(int.from_bytes(raw, "big", signed=True))
    return sorted(ids)


class MemoryBlockIndex:
    """An in-memory block index, for batch resolution and training."""

    def __init__(self, max_block_size: int) -> None:
        self.max_block_size = max_block_size
        self.members: dict[str, list[int]] = defaultdict(list)
        self.skipped_keys = 0

    def add(self, record: int, keys: Iterable[str]) -> None:
        for key in keys:
            self.members[key].append(record)

    def candidates(self, keys: Iterable[str], limit: int | None = None) -> list[int]:
        """Records sharing a key, those sharing the most keys first (at most ``limit``);
        keys with more than ``max_block_size`` members are skipped."""
        usable: list[list[int]] = []
        get = self.members.get
        for key in keys:
            members = get(key)
            if not members:
                continue
            if len(members) > self.max_block_size:
                self.skipped_keys += 1
                continue
            usable.append(members)
        # One count over all the blocks (Counter.update per block paid its Mapping check
        # each time), then records by id, stably re-sorted by shared keys, most first:
        # the order of a sort on (-shared keys, record), without building the tuples.
        shared = Counter(chain.from_iterable(usable))
        ranked = sorted(shared)
        ranked.sort(key=shared.__getitem__, reverse=True)
        return ranked[:limit]
