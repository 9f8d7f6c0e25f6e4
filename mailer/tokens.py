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


def _mac(payload: str, secret: str) -> str:
    digest = hmac.new(secret.encode(), _PURPOSE + payload.encode("ascii"), hashlib.sha256)
    return _b64(digest.digest())


def make_token(email: str, secret: str) -> str:
    """``base64(email).base64(hmac)``: readable by the endpoint, unforgeable without the secret."""
    payload = _b64(email.lower().encode("utf-8"))
    return f"{payload}.{_mac(payload, secret)}"


def read_token(token: str, secret: str) -> str | None:
    """The address a genuine token was made for, else None (no reason given)."""
    payload, dot, mac = token.partition(".")
    if not dot or not payload or not secret or not payload.isascii() or not mac.isascii():
        return None
    if not hmac.compare_digest(mac.encode("ascii"), _mac(payload, secret).encode("ascii")):
        return None
    try:
        return _unb64(payload).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def unsubscribe_url(base_url: str, email: str, secret: str) -> str:
    return f"{base_url.rstrip('/')}/unsubscribe/{make_token(email, secret)}"
