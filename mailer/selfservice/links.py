"""The signed links of the readers' pages, and the forms' CSRF tokens.

A manage link carries the subscriber's address key, signed: it is mailed in
every digest and stays valid as long as the secret does (as the unsubscribe
link). A confirmation link carries the sign-up's id, a one-time nonce the
store keeps until it is used, and its expiry, all signed: it works once,
for 48 hours. Pure: composing digests makes manage links without the web
server.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mailer.addresses import address_key
from mailer.tokens import seal, unseal

CONFIRM_HOURS = 48
_MANAGE = b"mailer/manage/v1\x00"
_CONFIRM = b"mailer/confirm/v1\x00"
_CSRF = b"mailer/csrf/v1\x00"


def manage_token(email: str, secret: str) -> str:
    return seal(address_key(email), secret, _MANAGE)


def read_manage_token(token: str, secret: str) -> str | None:
    """The address key a genuine manage token was made for, else None."""
    return unseal(token, secret, _MANAGE)


def manage_url(base_url: str, email: str, secret: str) -> str:
    return f"{base_url.rstrip('/')}/manage/{manage_token(email, secret)}"


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What a genuine confirmation token says; ``expired`` is judged at reading."""

    subscriber_id: int
    nonce: str
    expired: bool


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def confirm_token(subscriber_id: int, nonce: str, expires: datetime, secret: str) -> str:
    return seal(f"{subscriber_id}.{nonce}.{int(expires.timestamp())}", secret, _CONFIRM)


def confirm_url(base_url: str, subscriber_id: int, nonce: str, now: datetime, secret: str) -> str:
    expires = now + timedelta(hours=CONFIRM_HOURS)
    return f"{base_url.rstrip('/')}/confirm/{confirm_token(subscriber_id, nonce, expires, secret)}"


def read_confirm_token(token: str, secret: str, now: datetime) -> Confirmation | None:
    """The sign-up a genuine confirmation token names, else None."""
    text = unseal(token, secret, _CONFIRM)
    if text is None:
        return None
    ident, _, rest = text.partition(".")
    nonce, _, expires = rest.rpartition(".")
    if not ident.isdigit() or not nonce or not expires.isdigit():
        return None
    deadline = datetime.fromtimestamp(int(expires), UTC)
    return Confirmation(int(ident), nonce, expired=now >= deadline)


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(cookie: str, secret: str) -> str:
    """The form field that goes with the browser's CSRF cookie: another site
    can make the browser send the cookie, but cannot read a page to learn it."""
    return seal(cookie, secret, _CSRF)


def csrf_ok(cookie: str | None, field: str | None, secret: str) -> bool:
    if not cookie or not field:
        return False
    return secrets.compare_digest(field, csrf_token(cookie, secret))
