"""What a message in the bounce mailbox is (mailer.bounces.classify): pure,
bytes in, a value out; the messages are written as real servers write them."""

from __future__ import annotations

import pytest

from mailer.bounces.classify import (
    AutoReply,
    Bounce,
    NotUnderstood,
    UnsubscribeReply,
    classify,
    is_hard,
    status_code,
)
from tests.bounce_mail import dsn, out_of_office, qmail_bounce, reply

VERP = "bounces+12.0a1b2c3d4e@example.org"
ORIGINAL = (
    b"Return-Path: <bounces+12.0a1b2c3d4e@example.org>\r\n"
    b"From: Paper Digest <digest@example.org>\r\n"
    b"To: ada@example.org\r\n"
    b"Subject: 3 new papers\r\n"
    b"Message-ID: <20261123T090000.k3j4h5@example.org>\r\n"
    b"\r\n"
    b"Dear Ada, ... unsubscribe: mailto:digest@example.org\r\n"
)


def bounce_of(data: bytes) -> Bounce:
    found = classify(data)
    assert isinstance(found, Bounce), found
    return found


def test_a_dsn_reports_the_failed_recipient_with_its_status_and_the_servers_words() -> None:
    found = bounce_of(dsn(bounce_to=VERP, recipient="ada@example.org", original=ORIGINAL))
    [failure] = found.failures
    assert (failure.recipient, failure.status, failure.hard) == ("ada@example.org", "5.1.1", True)
    assert "550 5.1.1 <ada@example.org>: Recipient address rejected" in failure.diagnostic


def test_a_dsn_names_the_verp_address_it_came_back_to_and_the_original_message_id() -> None:
    found = bounce_of(dsn(bounce_to=VERP, recipient="ada@example.org", original=ORIGINAL))
    assert VERP in found.addressed_to
    assert found.message_ids == ("<20261123T090000.k3j4h5@example.org>",)


@pytest.mark.parametrize(
    ("status", "hard"),
    [
        ("5.1.1", True),  # no such user
        ("5.1.10", True),  # null MX
        ("5.0.0", True),
        ("5.2.1", True),  # mailbox disabled
        ("5.2.2", False),  # mailbox full
        ("5.2.3", False),  # message too large
        ("5.3.1", False),  # mail system full
        ("5.7.1", False),  # refused by policy: about the sender, not the address
        ("4.2.2", False),
        ("4.4.7", False),  # delivery time expired
    ],
)
def test_permanent_failures_are_hard_unless_they_say_nothing_about_the_address(
    status: str, hard: bool
) -> None:
    found = bounce_of(
        dsn(bounce_to=VERP, recipient="ada@example.org", original=ORIGINAL, status=status)
    )
    assert [(f.status, f.hard) for f in found.failures] == [(status, hard)]
    assert is_hard(status) is hard


def test_a_delay_warning_is_a_bounce_with_no_failure() -> None:
    found = bounce_of(
        dsn(
            bounce_to=VERP,
            recipient="ada@example.org",
            original=ORIGINAL,
            status="4.4.1",
            action="delayed",
        )
    )
    assert found.failures == ()


def test_a_qmail_bounce_is_read_with_the_status_in_its_text() -> None:
    found = bounce_of(qmail_bounce(bounce_to=VERP, recipient="ada@example.org", original=ORIGINAL))
    [failure] = found.failures
    assert (failure.recipient, failure.status) == ("ada@example.org", "5.1.1")
    assert "no mailbox here by that name" in failure.diagnostic
    assert found.message_ids == ("<20261123T090000.k3j4h5@example.org>",)


def test_a_status_is_never_read_from_the_copy_of_the_digest() -> None:
    original = ORIGINAL.replace(b"Dear Ada", b"Scores 4.2.2 and 5.7.1 in the abstract")
    text = qmail_bounce(bounce_to=VERP, recipient="ada@example.org", original=original)
    found = bounce_of(text.replace(b"(#5.1.1)", b""))
    assert [f.status for f in found.failures] == ["5.0.0"]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("smtp; 550 5.1.1 <a@b>: User unknown", "5.1.1"),
        ("452 4.2.2 Mailbox full", "4.2.2"),
        ("5.1.10", "5.1.10"),
        ("version 1.5.2.3", None),
        ("550 No such user", None),
    ],
)
def test_status_codes_are_read_from_server_replies(text: str, code: str | None) -> None:
    assert status_code(text) == code


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("unsubscribe", ""),
        ("Unsubscribe ada@example.org", ""),
        ("Re: unsubscribe ada@example.org", ""),
        ("RE: Fwd:  UNSUBSCRIBE  ", ""),
        ("Aw: unsubscribe <ada@example.org>", ""),
        ("Re: 3 new papers", "\n\nunsubscribe\n> quoted digest"),
    ],
)
def test_a_reply_saying_unsubscribe_asks_to_unsubscribe_its_sender(subject: str, body: str) -> None:
    assert classify(reply(sender="ada@example.org", subject=subject, body=body)) == (
        UnsubscribeReply("ada@example.org")
    )


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Re: 3 new papers", "Thanks! Please keep them coming.\nunsubscribe\n"),
        ("how do I unsubscribe?", ""),
        ("unsubscribe me and my friends", ""),
    ],
)
def test_a_reply_that_only_mentions_unsubscribing_is_for_a_person(subject: str, body: str) -> None:
    assert isinstance(
        classify(reply(sender="ada@example.org", subject=subject, body=body)), NotUnderstood
    )


def test_an_automatic_reply_is_never_an_unsubscribe_request() -> None:
    found = classify(out_of_office(sender="ada@example.org", to="digest@example.org"))
    assert found == AutoReply("Auto-Submitted: auto-replied")


def test_a_message_from_the_null_sender_is_never_an_unsubscribe_request() -> None:
    message = reply(sender="ada@example.org").replace(
        b"Return-Path: <ada@example.org>", b"Return-Path: <>"
    )
    assert isinstance(classify(message), NotUnderstood)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe\x00",
        b"no headers here\njust text",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n\x00",
        b"Content-Type: message/delivery-status\n\nFinal-Recipient: ;\nAction: failed\n",
    ],
    ids=["empty", "binary", "no-headers", "broken-report", "empty-recipient"],
)
def test_garbage_is_not_understood_or_a_bounce_with_no_one_to_blame(data: bytes) -> None:
    found = classify(data)
    assert isinstance(found, NotUnderstood) or (isinstance(found, Bounce) and not found.failures)
