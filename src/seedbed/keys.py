"""API keys: made from the OS's random source, shown once, stored only as a SHA-256 hash.

A plain hash (not a slow password hash) is right here: keys are 192 random bits, so there is
nothing to brute-force, and every request has to look its key up quickly.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["hash_key", "new_hmac_key", "new_key", "new_key_id"]

KEY_PREFIX = "sb-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(24)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def new_hmac_key() -> str:
    """A webhook HMAC key (256 random bits): callbacks of the key's tasks are signed with it."""
    return secrets.token_urlsafe(32)
