"""The console's admin token: made once, shown once, kept as a SHA-256 hash.

Two sources, either works: the ``admin_token`` setting (``SEEDBED_ADMIN_TOKEN``) and the one
``seedbed admin token`` stores (its hash, in the store's flags table). A request's token is
hashed and the hashes compared with ``hmac.compare_digest``: constant time, whatever the
input's length.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["TOKEN_PREFIX", "hash_token", "matches", "new_token"]

TOKEN_PREFIX = "sba-"


def new_token() -> str:
    """256 random bits: a plain hash is enough, there is nothing to brute-force."""
    return TOKEN_PREFIX + secrets.token_hex(32)


def hash_token(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def matches(plain: str, *, setting: str | None, stored_hash: str | None) -> bool:
    """Whether ``plain`` is the configured token or the stored one; both are always compared,
    so the time taken says nothing about which exists."""
    given = hash_token(plain)
    ok = False
    for expected in (hash_token(setting) if setting else None, stored_hash):
        # a missing token is compared against a value no hash can equal
        ok |= hmac.compare_digest(given, expected if expected else "!" * len(given))
    return ok
