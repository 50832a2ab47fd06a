"""Key material: random keys shown once, stored as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "tsk_"
# Enough of the key to tell keys apart in a list, far too little to guess the rest.
DISPLAY_CHARS = 12
MIN_BOOTSTRAP_KEY_CHARS = 24


def generate_key() -> str:
    """A new key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # The key is 256 random bits, so a fast hash is as strong as a slow one here; it only has to
    # make a stolen database useless for calling the API.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def display_prefix(key: str) -> str:
    return key[:DISPLAY_CHARS]
