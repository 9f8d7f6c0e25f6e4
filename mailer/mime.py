"""From rendered parts to message bytes: headers, MIME structure, transfer encoding.

Pure and free of templates, so what goes on the wire is built and checked
in one place: every value that reaches a header is stripped of control
characters first, every address is checked (MessageError if it is not one),
and every part is 7-bit with lines within SMTP's limit.
"""

from __future__ import annotations

import binascii
import email.policy
import email.utils
import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import EmailPolicy
from functools import lru_cache
from typing import cast
from urllib.parse import quote, urlsplit

from mailer.addresses import normalise_address
from mailer.digests import Digest
from mailer.errors import MessageError

# SMTP's limit on a line of a message, without its CRLF (RFC 5321 4.5.3.1.6).
SMTP_LINE = 998
# The <URL>s of a List-Unsubscribe header.
_BRACKETED = re.compile(r"<[^<>]*>")


@dataclass(frozen=True)
class Rendered:
    """A digest's rendered parts: what a message is made of."""

    subject: str
    html: str
    text: str
    preheader: str


def header_text(value: str) -> str:
    """One header-safe line: control characters and line/paragraph separators
    (which str.splitlines honours) become spaces, so nothing can start a header."""
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value)
    return " ".join(cleaned.split())


def is_web_url(url: str) -> bool:
    """An http(s) URL with a host and nothing that could break out of a header or attribute."""
    if any(c.isspace() or c in '<>"' or unicodedata.category(c) == "Cc" for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_link(url: str) -> bool:
    if url.startswith("mailto:"):
        return "@" in url and not any(c.isspace() or c in '<>"' for c in url)
    return is_web_url(url)


class _UrlListHeader(UnstructuredHeader):
    """List-Unsubscribe holds <URL>s that receivers do not decode, so a long
    one must be folded only between URLs, never turned into encoded words."""

    def fold(self, *, policy: EmailPolicy[EmailMessage]) -> str:
        items = _BRACKETED.findall(str(self))
        name: str = self.name  # type: ignore[attr-defined]
        return f"{name}: " + f",{policy.linesep} ".join(items) + policy.linesep


def _message_policy() -> EmailPolicy[EmailMessage]:
    registry = HeaderRegistry()
    for name in ("list-unsubscribe", "list-help"):
        registry.map_to_type(name, cast("type[BaseHeader]", _UrlListHeader))
    return email.policy.default.clone(header_factory=registry)


_POLICY = _message_policy()
_UTF8_POLICY = _POLICY.clone(utf8=True)


def compose_message(
    digest: Digest,
    rendered: Rendered,
    *,
    sender: str,
    message_id: str,
    date: datetime,
    list_unsubscribe: Sequence[str],
    one_click: bool,
) -> EmailMessage:
    """The message :func:`compose_bytes` makes, parsed back, for callers that
    inspect it rather than send it."""
    data = compose_bytes(
        digest,
        rendered,
        sender=sender,
        message_id=message_id,
        date=date,
        list_unsubscribe=list_unsubscribe,
        one_click=one_click,
    )
    return email.message_from_bytes(data, policy=_POLICY)


def compose_bytes(
    digest: Digest,
    rendered: Rendered,
    *,
    sender: str,
    message_id: str,
    date: datetime,
    list_unsubscribe: Sequence[str],
    one_click: bool,
) -> bytes:
    """A multipart/alternative message, plain text first so clients that
    prefer the last part they can show pick the HTML.

    The email package builds the headers; the body is written here, because
    its quoted-printable encoder and line-by-line generator cost more than
    rendering the digest. Each part is 7-bit ASCII with lines within SMTP's
    limit, unencoded where it already is (the HTML, see seven_bit_html), else
    quoted-printable, so any server takes it, 8BITMIME or not."""
    from_header, list_header_lines = _sender_headers(sender)
    to = _address(
        header_text(digest.recipient.name), header_text(digest.recipient.email), "recipient"
    )
    head = EmailMessage(policy=_POLICY)
    head["To"] = to
    head["Subject"] = header_text(rendered.subject)
    head["Date"] = date
    mid = header_text(message_id).strip("<>")
    head["Message-ID"] = f"<{mid}>"
    links = [header_text(u) for u in list_unsubscribe]
    links = [u for u in links if _is_link(u)]
    if links:
        head["List-Unsubscribe"] = ", ".join(f"<{u}>" for u in links)
        if one_click and any(u.startswith("https://") for u in links):
            head["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    parts = [(b"plain", *_transfer_encoded(rendered.text))]
    parts.append((b"html", *_transfer_encoded(rendered.html)))
    # "=_" never occurs in quoted-printable text ("=" is always escaped or
    # ends a line); a 7bit part is checked for the random rest.
    boundary = f"=_{secrets.token_hex(12)}".encode("ascii")
    while any(boundary in body for _, _, body in parts):
        boundary = f"=_{secrets.token_hex(12)}".encode("ascii")
    # An address with a non-ASCII local part goes in its header as UTF-8
    # (RFC 6532): such a message travels only over SMTPUTF8 (mailer.delivery).
    out = [from_header]
    out += [
        (_UTF8_POLICY if name == "To" and not to.addr_spec.isascii() else _POLICY).fold_binary(
            name, value
        )
        for name, value in head.raw_items()
    ]
    out += list_header_lines
    out += [
        b"MIME-Version: 1.0\n",
        b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\n\n',
    ]
    # The line break before a boundary belongs to the boundary (RFC 2046), so
    # each part's own final line break is followed by one more.
    for subtype, cte, body in parts:
        out += [
            b"--" + boundary + b"\n",
            b"Content-Type: text/" + subtype + b'; charset="utf-8"\n',
            b"Content-Transfer-Encoding: " + cte + b"\n\n",
            body,
            b"\n",
        ]
    out.append(b"--" + boundary + b"--\n")
    return b"".join(out)


@lru_cache(maxsize=16)
def _sender_headers(sender: str) -> tuple[bytes, tuple[bytes, ...]]:
    """The From and list headers, folded: the same in every digest from
    ``sender``, and parsing headers was most of building a message."""
    name, addr = email.utils.parseaddr(header_text(sender))
    address = _address(name, addr, "sender")
    head = EmailMessage(policy=_POLICY)
    head["From"] = address
    for header, value in list_headers(address).items():
        head[header] = value
    policy = _POLICY if address.addr_spec.isascii() else _UTF8_POLICY
    from_header, *rest = (
        (policy if header == "From" else _POLICY).fold_binary(header, value)
        for header, value in head.raw_items()
    )
    return from_header, tuple(rest)


def list_headers(sender: Address) -> dict[str, str]:
    """What marks a digest as a machine-sent list (RFC 2919, 2369, 3834) that
    receivers and their filters can name: the same for every digest from
    ``sender``, so a mailbox provider's reputation and feedback loop see one
    stream (Feedback-ID, as Gmail's Postmaster Tools read it)."""
    domain = sender.domain
    name = sender.display_name
    phrase = f"{_phrase(name)} " if name else ""
    help_link = f"mailto:{quote(sender.addr_spec, safe='@')}?subject=help"
    return {
        "List-Id": f"{phrase}<digest.{domain}>",
        "List-Help": f"<{help_link}>",
        "Auto-Submitted": "auto-generated",
        "Precedence": "bulk",
        "Feedback-ID": f"digest:mailer:{domain}",
    }


def _phrase(name: str) -> str:
    """``name`` as an RFC 5322 phrase: quoted when it holds specials."""
    if any(c in _SPECIALS for c in name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


_SPECIALS = frozenset('()<>[]:;@\\,."')


def new_message_id(sender_address: str, now: datetime) -> str:
    """``<20261127T090000.RANDOM@domain>``: unique, and never containing the
    From address (which spam filters score, rspamd's MID_CONTAINS_FROM): the
    left part is a time and random hex, redrawn in the unlikely case that it
    ends with the sender's local part."""
    local, _, domain = sender_address.rpartition("@")
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    while True:
        left = f"{stamp}.{secrets.token_hex(10)}"
        if not local or not left.lower().endswith(local.lower()):
            return f"<{left}@{domain or 'localhost'}>"


def _address(name: str, address: str, role: str) -> Address:
    """The header value for ``name <address>``; MessageError, naming the
    address, when it is not one (a message for it cannot be built)."""
    try:
        valid = normalise_address(address)
    except ValueError as exc:
        raise MessageError(f"cannot address a message: {role} {exc}") from exc
    local, _, domain = valid.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def _transfer_encoded(text: str) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, body): UTF-8 with every line ending made LF
    and a final one added, as the email package does; sent as it is (7bit)
    when that is ASCII with no NUL and no line over SMTP's limit, otherwise
    quoted-printable, both encoded in C (binascii) rather than by the email
    package's pure-Python encoder."""
    lines = text.encode("utf-8").splitlines()
    data = b"\n".join(lines) + b"\n"
    if data.isascii() and b"\0" not in data and max(map(len, lines), default=0) <= SMTP_LINE:
        return b"7bit", data
    return b"quoted-printable", binascii.b2a_qp(data, istext=True)


def message_part(message: bytes, subtype: str) -> str:
    """The decoded ``text/{subtype}`` part of a message ``compose_bytes``
    made: what a mail client shows, for ``preview`` to print."""
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        raise ValueError(f"the message has no text/{subtype} part")
    content = part.get_content()
    assert isinstance(content, str)
    return content
