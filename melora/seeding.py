"""Stable seeds derived from parts (run seed, document id, step): the same parts give the same seed everywhere.

Python's `hash` is salted per process, so seeds are derived with BLAKE2b instead. Every random draw of training
(posterior samples, dropout, the KL's prior noise) and of Monte-Carlo evaluation is seeded from such parts, which
makes results independent of batch size, batch order, process count and resumption.
"""

from __future__ import annotations

import hashlib


SEED_BITS = 63


def stable_seed(*parts: object) -> int:
    """A non-negative seed below 2**63 determined by `parts` (their `repr`s, in order).

    Example:
        >>> stable_seed(1, "obqa/validation/3") == stable_seed(1, "obqa/validation/3")
        True
    """
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)
