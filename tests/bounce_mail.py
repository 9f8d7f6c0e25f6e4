"""Messages as they arrive in a bounce mailbox, written the way real mail
servers write them: Postfix's RFC 3464 delivery status notification, qmail's
QSBMF bounce, a person's unsubscribe reply, an out-of-office auto-reply."""

from __future__ import annotations

import mailbox
from pathlib import Path

REPORTING_MTA = "mail.example.org"
DATE = "Mon, 23 Nov 2026 09:05:00 +0000"


def original_headers(message: bytes) -> str:
    """The header block of ``message`` (as text/rfc822-headers carries it)."""
    head, _, _ = message.replace(b"\r\n", b"\n").partition(b"\n\n")
    return head.decode("utf-8", errors="replace")


def dsn(
    *,
    bounce_to: str,
    recipient: str,
    original: bytes,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str | None = None,
) -> bytes:
    """Postfix's delivery status notification for ``recipient``, sent to the
    envelope sender ``bounce_to`` (the VERP address), with the original's
    headers attached (RFC 3464, RFC 3462 multipart/report)."""
    said = diagnostic or (
        f"550 {status} <{recipient}>: Recipient address rejected: User unknown in virtual "
        "mailbox table"
    )
    kind = "delayed" if action == "delayed" else "undeliverable"
    return f"""Return-Path: <>
Delivered-To: {bounce_to}
Received: by {REPORTING_MTA} (Postfix)
\tid 4N8Q2Z1xYz; {DATE}
Date: {DATE}
From: MAILER-DAEMON@{REPORTING_MTA} (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {bounce_to}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4N8Q2Z1xYz.1763888700/{REPORTING_MTA}"
Content-Transfer-Encoding: 8bit
Message-Id: <20261123090500.4N8Q2Z1xYz@{REPORTING_MTA}>

This is a MIME-encapsulated message.

--4N8Q2Z1xYz.1763888700/{REPORTING_MTA}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host {REPORTING_MTA}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

The message is {kind}.

<{recipient}>: host mx.example.net[192.0.2.25] said: {said} (in reply to
    RCPT TO command)

--4N8Q2Z1xYz.1763888700/{REPORTING_MTA}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; {REPORTING_MTA}
X-Postfix-Queue-ID: 4N8Q2Z1xYz
X-Postfix-Sender: rfc822; {bounce_to}
Arrival-Date: {DATE}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; {said}

--4N8Q2Z1xYz.1763888700/{REPORTING_MTA}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

{original_headers(original)}

--4N8Q2Z1xYz.1763888700/{REPORTING_MTA}--
""".encode()


def qmail_bounce(*, bounce_to: str, recipient: str, original: bytes) -> bytes:
    """qmail-send's bounce (QSBMF), the original copied below the break line."""
    copy = original.replace(b"\r\n", b"\n").decode("utf-8", errors="replace")
    return f"""Return-Path: <>
Delivered-To: {bounce_to}
Date: {DATE}
From: MAILER-DAEMON@mx.example.net
To: {bounce_to}
Subject: failure notice

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{recipient}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

{copy}
""".encode()


def reply(
    *,
    sender: str,
    to: str = "digest@example.org",
    subject: str = "unsubscribe",
    body: str = "",
    headers: str = "",
) -> bytes:
    """A message from ``sender``, as a local delivery agent stores it."""
    return f"""Return-Path: <{sender}>
Delivered-To: {to}
From: Ada Lovelace <{sender}>
To: Paper Digest <{to}>
Subject: {subject}
Date: {DATE}
Message-ID: <reply-{abs(hash((sender, subject, body))):x}@example.net>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
{headers}
{body}
""".encode()


def out_of_office(*, sender: str, to: str) -> bytes:
    """An auto-reply (RFC 3834) to a digest whose subject happens to say unsubscribe."""
    return reply(
        sender=sender,
        to=to,
        subject="Re: unsubscribe",
        body="I am away until Monday.",
        headers="Auto-Submitted: auto-replied\n",
    )


def drop(maildir: Path, data: bytes) -> str:
    """Deliver ``data`` into ``maildir``'s new/ as a local delivery agent does;
    returns its key."""
    box = mailbox.Maildir(maildir, create=True)
    return box.add(data)
