"""What a message in the bounce mailbox is: a bounce, an unsubscribe reply,
an automatic reply, or something for a person to read. Bytes in, a value out.

Bounces are recognised by flufl.bounce (Mailman's detectors: RFC 3464
delivery status notifications and the common non-standard formats of qmail,
Postfix, Exim, Exchange and others). The RFC 3463 status of each failed
recipient is read from the report's message/delivery-status part, or found
in the text of a non-standard one, and says hard or soft: a permanent (5.x.x)
failure is hard unless it says nothing about the address itself (a full
mailbox, a message too large, a policy or spam refusal); a temporary (4.x.x)
one is soft. A delay warning ("Action: delayed") is neither: the server is
still trying.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

# RFC 3463 enhanced status codes: class.subject.detail
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
UNKNOWN_PERMANENT = "5.0.0"  # a permanent failure whose report gives no status

# Permanent statuses about the message or the path rather than the address:
# mailbox full, message too large, mail system full. 5.7.x (security and
# policy: a block or a spam verdict) says more about the sender than the address.
_SOFT_PERMANENT = frozenset({"5.2.2", "5.2.3", "5.3.1", "5.3.4"})

# Where the bounce came to: the VERP address of the message that bounced.
_ADDRESSED_TO = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")

_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|antw|fwd?|wg)\s*(?:\[\d+\])?\s*:\s*)+", re.I)
_UNSUBSCRIBE = re.compile(r"unsubscribe(?:\s+<?[^\s<>@]+@[^\s<>@]+>?)?", re.I)
_MESSAGE_ID_LINE = re.compile(r"^message-id:\s*(<[^<>\s]+>)", re.I | re.M)
_AUTOMATIC_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})


def status_code(text: str) -> str | None:
    """The first RFC 3463 status in ``text`` ("550 5.1.1 User unknown" ->
    "5.1.1"), or None."""
    found = _STATUS.search(text)
    return ".".join(found.groups()) if found else None


def is_hard(status: str) -> bool:
    """Whether a failure with this status means the address will not work."""
    return (
        status.startswith("5.") and status not in _SOFT_PERMANENT and not status.startswith("5.7.")
    )


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient a bounce reports as failed."""

    recipient: str
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str  # the server's words (Diagnostic-Code), or the status alone

    @property
    def hard(self) -> bool:
        return is_hard(self.status)


@dataclass(frozen=True, slots=True)
class Bounce:
    """A delivery report. ``failures`` is empty for a delay warning; the
    message it is about is named by a VERP address in ``addressed_to`` or by
    one of ``message_ids`` (the original's, from the attached copy)."""

    failures: tuple[Failure, ...]
    addressed_to: tuple[str, ...]
    message_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnsubscribeReply:
    """A person's reply asking to stop: subject or first line "unsubscribe"."""

    sender: str


@dataclass(frozen=True, slots=True)
class AutoReply:
    """An automatic reply (out of office, a robot): nothing to do."""

    why: str


@dataclass(frozen=True, slots=True)
class NotUnderstood:
    """Neither: left in the mailbox for a person."""

    why: str


Classified = Bounce | UnsubscribeReply | AutoReply | NotUnderstood


def classify(data: bytes) -> Classified:
    """What the message ``data`` (as stored in the mailbox) is."""
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    if message.defects and not message.keys():
        return NotUnderstood("not an email message (no headers)")
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping on odd input; flufl.bounce logs it
        temporary = permanent = frozenset()
    blocks = list(_status_blocks(message))
    reported = any(_is_report(part) for part in message.walk())
    if temporary or permanent or reported:
        return _bounce(message, blocks, permanent)
    automatic = _automatic(message)
    if automatic is not None:
        return AutoReply(automatic)
    if _null_sender(message):
        return NotUnderstood("from the null sender <>, but not a bounce format recognised")
    if _asks_to_unsubscribe(message):
        sender = parseaddr(_header(message, "From"))[1]
        if "@" not in sender:
            return NotUnderstood("an unsubscribe request without a From address")
        return UnsubscribeReply(sender)
    return NotUnderstood("not a bounce, and not an unsubscribe request")


# --- bounces ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Block:
    """One per-recipient field block of a message/delivery-status part."""

    recipient: str
    action: str
    status: str | None
    diagnostic: str


def _is_report(part: Message) -> bool:
    return part.get_content_type() == "message/delivery-status" or (
        part.get_content_type() == "multipart/report"
        and str(part.get_param("report-type", "")).lower() == "delivery-status"
    )


def _status_blocks(message: Message) -> Iterator[_Block]:
    """The per-recipient blocks of every message/delivery-status part (RFC
    3464 section 2.3)."""
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if not isinstance(payload, list):
            continue
        for block in payload:  # the per-message block names no recipient
            if not isinstance(block, Message):
                continue
            recipient = _typed_address(block.get("Final-Recipient", "")) or _typed_address(
                block.get("Original-Recipient", "")
            )
            if not recipient:
                continue
            diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
            status = status_code(str(block.get("Status", ""))) or status_code(diagnostic)
            yield _Block(
                recipient, str(block.get("Action", "")).strip().lower(), status, diagnostic
            )


def _typed_address(field: str) -> str:
    """The address of ``rfc822; ann@example.org`` (an address-type field)."""
    _, _, address = str(field).partition(";")
    return address.strip().strip("<>") if address else ""


def _bounce(message: Message, blocks: list[_Block], permanent: frozenset[bytes]) -> Bounce:
    failures: dict[str, Failure] = {}
    for block in blocks:
        if not block.action.startswith(("failed", "error")):
            continue  # delayed, delivered, relayed, expanded: not a failure
        status = block.status or UNKNOWN_PERMANENT
        failures[block.recipient.lower()] = Failure(
            block.recipient, status, block.diagnostic or status
        )
    text = _text(message, attached=False)
    for raw in sorted(permanent):
        recipient = raw.decode("ascii", errors="replace")
        if recipient.lower() in failures:
            continue
        line = _line_about(text, recipient)
        status = status_code(line) or UNKNOWN_PERMANENT
        failures[recipient.lower()] = Failure(recipient, status, line or status)
    return Bounce(tuple(failures.values()), _addressed_to(message), _original_ids(message))


def _addressed_to(message: Message) -> tuple[str, ...]:
    found: list[str] = []
    for name in _ADDRESSED_TO:
        for value in message.get_all(name, []):
            found.extend(address for _, address in getaddresses([str(value)]) if address)
    return tuple(dict.fromkeys(found))


def _original_ids(message: Message) -> tuple[str, ...]:
    """Message-IDs of the original message: from an attached copy
    (message/rfc822) or its headers (text/rfc822-headers), else from a
    ``Message-ID:`` line in the text of the report (qmail, Postfix)."""
    found: list[str] = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            for original in inner if isinstance(inner, list) else []:
                if isinstance(original, Message) and original.get("Message-ID"):
                    found.append(str(original["Message-ID"]).strip())
        elif kind == "text/rfc822-headers":
            headers = HeaderParser().parsestr(_decoded(part))
            if headers.get("Message-ID"):
                found.append(str(headers["Message-ID"]).strip())
    found.extend(_MESSAGE_ID_LINE.findall(_text(message)))
    return tuple(dict.fromkeys(i for i in found if i))


def _line_about(text: str, recipient: str) -> str:
    """The report's words about ``recipient``: the line naming it and the
    lines after it, up to a blank line (qmail and Postfix write so)."""
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if recipient.lower() in line.lower():
            said = [line.strip()]
            for more in lines[n + 1 : n + 4]:
                if not more.strip():
                    break
                said.append(more.strip())
            return " ".join(" ".join(said).split())[:500]
    return ""


# --- replies -----------------------------------------------------------------------


def _automatic(message: Message) -> str | None:
    """Why ``message`` is an automatic one (RFC 3834), or None."""
    auto = _header(message, "Auto-Submitted").strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    precedence = _header(message, "Precedence").strip().lower()
    if precedence in _AUTOMATIC_PRECEDENCE:
        return f"Precedence: {precedence}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress"):
        if message.get(name) is not None:
            return f"{name} header"
    return None


def _null_sender(message: Message) -> bool:
    """Whether the envelope sender, as delivery wrote it, is empty: the
    sender of bounces and other notices, never of a person's reply."""
    paths = message.get_all("Return-Path", [])
    return any(str(p).strip() in ("<>", "") for p in paths)


def _asks_to_unsubscribe(message: Message) -> bool:
    subject = _REPLY_PREFIX.sub("", _header(message, "Subject")).strip()
    if _UNSUBSCRIBE.fullmatch(subject):
        return True
    for line in _plain_text(message).splitlines():
        if line.strip():
            return _UNSUBSCRIBE.fullmatch(line.strip()) is not None
    return False


# --- reading parts -------------------------------------------------------------------


def _header(message: Message, name: str) -> str:
    """A header's value, RFC 2047 words decoded; "" when absent or unreadable."""
    value = message.get(name)
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(str(value))))
    except (UnicodeError, LookupError, ValueError):
        return str(value)


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _plain_text(message: Message) -> str:
    """The first text/plain part a person wrote (not in an attachment)."""
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            return ""
        if part.get_content_type() == "text/plain" and not part.get_filename():
            return _decoded(part)
    return ""


def _text(message: Message, *, attached: bool = True) -> str:
    """Every text part of the report, decoded and joined; with ``attached``
    false, not those of an attached message (the original digest's text)."""

    def parts(part: Message) -> Iterator[str]:
        if part.get_content_maintype() == "text":
            yield _decoded(part)
        elif part.get_content_type() == "message/rfc822" and not attached:
            return
        elif part.is_multipart():
            for inner in part.get_payload():
                if isinstance(inner, Message):
                    yield from parts(inner)

    return "\n".join(parts(message))
