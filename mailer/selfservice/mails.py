"""The notices the pages mail: the confirmation of a sign-up and, for an
address that already subscribes, its manage link. They go through the
outbox like digests (``DeliveryKind.NOTICE``), so the same transport,
retries, DKIM signature and VERP envelope apply; an unsubscribe never
cancels them, since the reader asked for them on the page.

Pure: values in, an ``Outgoing`` out. They say nothing a stranger could
have typed (no name, no query), so the form cannot be used to mail
someone else chosen text.
"""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default
from email.utils import format_datetime
from typing import Literal

from mailer.dkim import DkimSigner
from mailer.mime import new_message_id
from mailer.selfservice.links import CONFIRM_HOURS
from mailer.selfservice.pages import PRODUCT, Pages
from mailer.store import DeliveryKind, Outgoing

NoticeKind = Literal["confirm", "manage"]
SUBJECTS: dict[NoticeKind, str] = {
    "confirm": f"Confirm your {PRODUCT} subscription",
    "manage": f"Your {PRODUCT} subscription page",
}


def notice(
    pages: Pages,
    kind: NoticeKind,
    *,
    subscriber_id: int,
    to: str,
    link: str,
    now: datetime,
    sender: str,
    sender_address: str,
    dkim: DkimSigner | None = None,
) -> Outgoing:
    """A plain-text notice to ``to`` holding ``link``, ready for the outbox."""
    text = pages.render(f"mail-{kind}.txt", email=to, link=link, hours=CONFIRM_HOURS)
    local, _, domain = to.rpartition("@")
    message = EmailMessage(policy=default.clone(utf8=not local.isascii()))
    message["From"] = sender
    message["To"] = Address(username=local, domain=domain)
    message["Subject"] = SUBJECTS[kind]
    message["Date"] = format_datetime(now)
    message_id = new_message_id(sender_address, now)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    # 7bit keeps the link whole on its line for any reader; QP otherwise.
    message.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
    data = message.as_bytes()
    if dkim is not None:
        data = dkim.sign(data)
    return Outgoing(
        subscriber_id, to, message_id, SUBJECTS[kind], data, [], kind=DeliveryKind.NOTICE
    )
