"""Signed one-click unsubscribe tokens (RFC 8058) and the links that carry them.

A link carries the address and an HMAC of it, so the endpoint needs no
lookup table and nobody can forge or enumerate links without the secret.
Pure: composing digests signs links without loading the web server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

# Binds a token to its purpose, so a MAC made for anything else never verifies here.
_PURPOSE = b"mailer/unsubscribe/v1\x00"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(payload: str, secret: str, purpose: bytes = _PURPOSE) -> str:
    digest = hmac.new(secret.encode(), purpose + payload.encode("ascii"), hashlib.sha256)
    return _b64(digest.digest())


def make_token(email: str, secret: str) -> str:
    """``base64(email).base64(hmac)``: readable by the endpoint, unforgeable without the secret."""
    return seal(email.lower(), secret, _PURPOSE)


def read_token(token: str, secret: str) -> str | None:
    """The address a genuine token was made for, else None (no reason given)."""
    return unseal(token, secret, _PURPOSE)


def unsubscribe_url(base_url: str, email: str, secret: str) -> str:
    return f"{base_url.rstrip('/')}/unsubscribe/{make_token(email, secret)}"


def seal(text: str, secret: str, purpose: bytes) -> str:
    """``base64(text).base64(hmac)`` bound to ``purpose`` (``b"mailer/NAME/v1\\0"``):
    a token made for one purpose never verifies for another."""
    payload = _b64(text.encode("utf-8"))
    return f"{payload}.{_mac(payload, secret, purpose)}"


def unseal(token: str, secret: str, purpose: bytes) -> str | None:
    """The text a genuine ``seal`` token for ``purpose`` carries, else None."""
    payload, dot, mac = token.partition(".")
    if not dot or not payload or not secret or not payload.isascii() or not mac.isascii():
        return None
    expected = _mac(payload, secret, purpose)
    if not hmac.compare_digest(mac.encode("ascii"), expected.encode("ascii")):
        return None
    try:
        return _unb64(payload).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
