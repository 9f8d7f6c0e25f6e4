"""Signed links: one-click unsubscribe (RFC 8058), a digest's feedback
links ("more like this", "not for me", per subscriber and paper), and the
other purposes that ``seal`` tokens for.

A link carries what it is about (the address, and the paper) and an HMAC
of it, so the endpoint needs no lookup table and nobody can forge or
enumerate links without the secret. Each kind of link signs under its own
purpose, so a token made for one never verifies as another. Pure: composing
digests signs links without loading the web server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

# Binds a token to its purpose, so a MAC made for anything else never verifies here.
_PURPOSE = b"mailer/unsubscribe/v1\x00"
_FEEDBACK = b"mailer/feedback/v1\x00"


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


def make_feedback_token(email: str, paper_id: int, secret: str) -> str:
    """A token naming one subscriber and one paper, for its feedback links."""
    return seal(f"{paper_id}:{email.lower()}", secret, _FEEDBACK)


def read_feedback_token(token: str, secret: str) -> tuple[str, int] | None:
    """(address, paper id) of a genuine feedback token, else None."""
    text = unseal(token, secret, _FEEDBACK)
    if text is None:
        return None
    paper, _, email = text.partition(":")
    if not (paper.isascii() and paper.isdigit()) or not email:
        return None
    return email, int(paper)


def feedback_urls(base_url: str, email: str, paper_id: int, secret: str) -> tuple[str, str]:
    """The "more like this" and "not for me" links of one paper in one
    subscriber's digest."""
    base = f"{base_url.rstrip('/')}/feedback/{make_feedback_token(email, paper_id, secret)}"
    return f"{base}/more", f"{base}/less"


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
