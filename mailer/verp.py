"""The envelope sender of each message, and reading a bounce's address back.

With ``[smtp] return_path`` set, every message goes out with its own
envelope sender (VERP): ``local+<id>.<tag>@domain``, where ``<id>`` is the
outbox row and ``<tag>`` a short hash of that row's Message-ID, a random
value only the message's recipient ever sees. A bounce comes back to that
address, so it names the one delivery that failed, and a forged bounce
cannot name a delivery whose Message-ID its sender never saw. No secret and
no extra column: the outbox already stores the Message-ID.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mailer.config import SmtpConfig

TAG_LENGTH = 10  # hex digits: 40 bits, short enough for any local part
_TOKEN = re.compile(rf"([1-9][0-9]*)\.([0-9a-f]{{{TAG_LENGTH}}})")


def _tag(delivery_id: int, message_id: str) -> str:
    material = f"{delivery_id}:{message_id.strip().strip('<>')}".encode()
    return hashlib.sha256(material).hexdigest()[:TAG_LENGTH]


def verp_address(return_path: str, delivery_id: int, message_id: str) -> str:
    """``return_path`` with the token of delivery ``delivery_id`` after a ``+``."""
    local, _, domain = return_path.rpartition("@")
    return f"{local}+{delivery_id}.{_tag(delivery_id, message_id)}@{domain}"


def envelope_sender(smtp: SmtpConfig, delivery_id: int | None, message_id: str) -> str:
    """MAIL FROM for one message: the VERP address when ``return_path`` is set
    (and ``verp`` on), ``return_path`` itself with ``verp`` off, else the From address."""
    if not smtp.return_path:
        return smtp.sender_address
    if not smtp.verp or delivery_id is None:
        return smtp.return_path
    return verp_address(smtp.return_path, delivery_id, message_id)


@dataclass(frozen=True, slots=True)
class BounceToken:
    """What a bounce address says: the delivery it names, and the tag to check
    against that delivery's Message-ID (``names``)."""

    delivery_id: int
    tag: str

    def names(self, message_id: str) -> bool:
        """Whether this token was made for the message with ``message_id``."""
        return _tag(self.delivery_id, message_id) == self.tag


def parse_bounce_address(address: str, return_path: str) -> BounceToken | None:
    """The token in ``address`` (an envelope recipient of a bounce, with or
    without <>) if it is ``return_path`` with a VERP token, else None. The
    domain compares case-insensitively; the tag is read in lower case, since
    some servers change the case of a local part."""
    address = address.strip().strip("<>")
    local, _, domain = address.rpartition("@")
    base_local, _, base_domain = return_path.rpartition("@")
    if not local or domain.lower() != base_domain.lower():
        return None
    prefix, plus, token = local.rpartition("+")
    if not plus or prefix.lower() != base_local.lower():
        return None
    found = _TOKEN.fullmatch(token.lower())
    if found is None:
        return None
    return BounceToken(int(found[1]), found[2])
