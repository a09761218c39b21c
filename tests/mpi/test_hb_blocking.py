"""Block keys are stored: the hashing shortcut of :func:`mpi.blocking._hash` (a copy of
an empty hash per key) must give the strings the plain construction gave."""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor

from mpi.blocking import KEY_DIGEST_BYTES, _hash


def _plain_hash(kind: str, *parts: object) -> str:
    """The previous algorithm: a new hash per key."""
    text = "\x1f".join(map(str, parts))
    return f"{kind}:{hashlib.blake2b(text.encode(), digest_size=KEY_DIGEST_BYTES).hexdigest()}"


def _random_parts(rng: random.Random) -> tuple[object, ...]:
    alphabet = "abcxyzSMTÄöß李\x1f 0123456789-"
    parts: list[object] = []
    for _ in range(rng.randint(0, 5)):
        if rng.random() < 0.3:
            parts.append(rng.randint(-5, 10**6))
        else:
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))))
    return (rng.choice(["fy", "gd", "id", "ih", "ad"]), *parts)


def test_keys_equal_the_plain_hash() -> None:
    rng = random.Random(11)
    for _ in range(5000):
        parts = _random_parts(rng)
        assert _hash(*parts) == _plain_hash(*parts)


def test_keys_hashed_in_threads_equal_the_plain_hash() -> None:
    """The empty hash is shared: copies taken concurrently do not see each other's data."""
    rng = random.Random(12)
    samples = [_random_parts(rng) for _ in range(4000)]
    with ThreadPoolExecutor(4) as pool:
        keys = list(pool.map(lambda parts: _hash(*parts), samples))
    assert keys == [_plain_hash(*parts) for parts in samples]
    assert _hash("bd") == _plain_hash("bd")  # the empty hash itself is untouched
