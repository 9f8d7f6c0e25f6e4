"""The SMTP session as the server sees it: the EHLO name, the envelope
sender (VERP, read back from a bounce address), and what a refusal of the
session itself does: sending pauses and every message stays queued, rather
than each message failing one by one."""

from __future__ import annotations

import asyncio
import mailbox
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.config import SmtpConfig, parse_config
from mailer.delivery import MaildirTransport, SmtpTransport, TransportUnavailableError
from mailer.errors import ConfigError
from mailer.verp import envelope_sender, parse_bounce_address, verp_address
from tests.conftest import Sink, SmtpServer, running_smtp_server
from tests.test_faults import Rig, paper, recipients, statuses

POSTFIX_HELO = "504 5.5.2 <box>: Helo command rejected: need fully-qualified hostname"
MESSAGE = b"From: d@example.org\r\nTo: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


@dataclass
class Gatekeeper(Sink):
    """A Sink that records the EHLO/HELO names it is greeted with and can
    refuse the greeting or the sender, as a server with a HELO or sender
    policy does."""

    greetings: list[str] = field(default_factory=list)
    refuse_helo: str | None = None
    refuse_mail: str | None = None

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.greetings.append(hostname)
        if self.refuse_helo:
            return [self.refuse_helo]
        session.host_name = hostname
        return responses

    async def handle_HELO(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        self.greetings.append(hostname)
        if self.refuse_helo:
            return self.refuse_helo
        session.host_name = hostname
        return "250 OK"

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refuse_mail:
            return self.refuse_mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"


@dataclass
class GatedServer(SmtpServer):
    sink: Gatekeeper


@pytest.fixture
def gated() -> Iterator[GatedServer]:
    sink = Gatekeeper()
    with running_smtp_server(sink) as server:
        yield GatedServer(server.host, server.port, sink, server.controller)


def smtp(port: int, **settings: object) -> SmtpTransport:
    options: dict[str, object] = {"security": "none", "timeout_seconds": 5, **settings}
    return SmtpTransport(SmtpConfig.model_validate({"host": "127.0.0.1", "port": port, **options}))


async def send_one(transport: SmtpTransport, sender: str = "d@example.org") -> str:
    async with transport as t:
        return await t.send(sender, "a@example.org", MESSAGE)


# --- the EHLO name ---------------------------------------------------------------------


def test_ehlo_name_is_local_hostname(gated: GatedServer) -> None:
    asyncio.run(send_one(smtp(gated.port, local_hostname="mail.example.net")))
    assert gated.sink.greetings == ["mail.example.net"]
    assert len(gated.messages) == 1


def test_ehlo_name_defaults_to_the_machines_fqdn(gated: GatedServer) -> None:
    asyncio.run(send_one(smtp(gated.port)))
    assert gated.sink.greetings == [socket.getfqdn()]


@pytest.mark.parametrize("name", ["bad host", "mail_example", "-mail.example.org", "a..b"])
def test_local_hostname_must_be_a_host_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="local_hostname"):
        parse_config(f'[smtp]\nlocal_hostname = "{name}"\n', source="m.toml", base_dir=tmp_path)


# --- refusals of the session are transport failures ----------------------------------


def test_refused_ehlo_and_helo_is_transport_unavailable_naming_the_name(
    gated: GatedServer,
) -> None:
    gated.sink.refuse_helo = "504 5.5.2 Helo command rejected: need fully-qualified hostname"
    with pytest.raises(TransportUnavailableError) as info:
        asyncio.run(send_one(smtp(gated.port, local_hostname="box")))
    assert "504" in info.value.message
    assert "box" in info.value.message
    assert "local_hostname" in (info.value.hint or "")
    assert gated.messages == []


@pytest.mark.parametrize("reply", ["451 4.7.1 try later", "550 5.7.1 sender rejected"])
def test_refused_mail_from_is_transport_unavailable(gated: GatedServer, reply: str) -> None:
    gated.sink.refuse_mail = reply
    with pytest.raises(TransportUnavailableError) as info:
        asyncio.run(send_one(smtp(gated.port)))
    assert "MAIL FROM" in info.value.message
    assert reply.split()[0] in info.value.message
    assert not info.value.permanent


def test_rcpt_reply_blaming_the_helo_name_is_transport_unavailable(gated: GatedServer) -> None:
    gated.sink.refuse["a@example.org"] = POSTFIX_HELO
    with pytest.raises(TransportUnavailableError, match="Helo command rejected"):
        asyncio.run(send_one(smtp(gated.port)))


def set_fault(server: GatedServer, fault: str) -> None:
    if fault == "ehlo":
        server.sink.refuse_helo = POSTFIX_HELO
    elif fault == "rcpt-helo":
        for r in ("ada@example.org", "grace@example.org", "alan@example.org"):
            server.sink.refuse[r] = POSTFIX_HELO
    else:
        server.sink.refuse_mail = fault


def clear_faults(server: GatedServer) -> None:
    server.sink.refuse_helo = server.sink.refuse_mail = None
    server.sink.refuse.clear()


@pytest.mark.parametrize(
    "fault",
    ["ehlo", "rcpt-helo", "451 4.7.1 sender deferred", "550 5.7.1 sender not allowed"],
)
def test_session_refusal_pauses_sending_keeps_every_message_queued_then_delivers(
    tmp_path: Path, gated: GatedServer, fault: str
) -> None:
    set_fault(gated, fault)
    rig = Rig(tmp_path, gated.port, extra='local_hostname = "box"')
    rig.drop(paper(1))
    refused = rig.run()
    assert (refused.digests, refused.sent, refused.failed) == (3, 0, 0)
    assert refused.deferred == 3
    assert set(statuses(rig.store).values()) == {"pending"}
    assert sum(d.attempts for d in rig.store.deliveries()) >= 1, "the attempt is counted"
    assert any("refused" in e for e in refused.errors)
    tried = len(gated.sink.greetings)
    assert rig.later(seconds=10).sent == 0, "sending paused with back-off"
    assert len(gated.sink.greetings) == tried, "no new session before the pause ends"
    clear_faults(gated)
    assert rig.later(minutes=5).sent == 3
    assert rig.later(minutes=5).sent == 0
    rig.store.close()
    assert recipients(gated.messages) == {
        "ada@example.org": 1,
        "grace@example.org": 1,
        "alan@example.org": 1,
    }


def test_refused_data_still_fails_that_message_alone(tmp_path: Path, gated: GatedServer) -> None:
    gated.sink.refuse["grace@example.org"] = "550 5.1.1 no such user"
    rig = Rig(tmp_path, gated.port)
    rig.drop(paper(1))
    report = rig.run()
    rig.store.close()
    assert (report.sent, report.failed) == (2, 1)
    assert statuses(rig.store)["grace@example.org"] == "failed"


# --- the envelope sender -------------------------------------------------------------


def test_envelope_sender_is_the_from_address_by_default(tmp_path: Path, gated: GatedServer) -> None:
    rig = Rig(tmp_path, gated.port)
    rig.drop(paper(1))
    assert rig.run().sent == 3
    rig.store.close()
    assert {m.sender for m in gated.messages} == {"digest@example.org"}


def test_envelope_sender_is_a_verp_address_naming_each_delivery(
    tmp_path: Path, gated: GatedServer
) -> None:
    rig = Rig(tmp_path, gated.port, extra='return_path = "bounces@example.org"')
    rig.drop(paper(1))
    assert rig.run().sent == 3
    rows = {d.recipient: d for d in rig.store.deliveries()}
    rig.store.close()
    for got in gated.messages:
        (to,) = got.recipients
        row = rows[to]
        assert got.sender.startswith("bounces+")
        assert got.sender.endswith("@example.org")
        assert got.message["From"].addresses[0].addr_spec == "digest@example.org"
        token = parse_bounce_address(got.sender, "bounces@example.org")
        assert token is not None
        assert token.delivery_id == row.id
        assert token.names(row.message_id)
    assert len({m.sender for m in gated.messages}) == 3


def test_return_path_without_verp_is_the_envelope_sender_as_written(
    tmp_path: Path, gated: GatedServer
) -> None:
    rig = Rig(tmp_path, gated.port, extra='return_path = "bounces@example.org"\nverp = false')
    rig.drop(paper(1))
    assert rig.run().sent == 3
    rig.store.close()
    assert {m.sender for m in gated.messages} == {"bounces@example.org"}


def test_bounce_address_parses_back_case_insensitively_and_with_brackets() -> None:
    address = verp_address("bounces@example.org", 42, "<20261127T090000.ab@example.org>")
    token = parse_bounce_address(f"<{address.upper()}>", "bounces@example.org")
    assert token is not None
    assert token.delivery_id == 42
    assert token.names("<20261127T090000.ab@example.org>")


@pytest.mark.parametrize(
    "address",
    [
        "bounces@example.org",
        "other+42.0123456789@example.org",
        "bounces+42.0123456789@example.net",
        "bounces+42@example.org",
        "bounces+042.0123456789@example.org",
        "bounces+x.0123456789@example.org",
        "not an address",
    ],
)
def test_other_addresses_name_no_delivery(address: str) -> None:
    assert parse_bounce_address(address, "bounces@example.org") is None


def test_a_forged_tag_does_not_name_the_delivery() -> None:
    real = verp_address("bounces@example.org", 7, "<a@example.org>")
    token = parse_bounce_address(real, "bounces@example.org")
    other = parse_bounce_address("bounces+7.0123456789@example.org", "bounces@example.org")
    assert token is not None
    assert other is not None
    assert token.names("<a@example.org>")
    assert not other.names("<a@example.org>")
    assert not token.names("<b@example.org>")


def test_send_test_has_no_delivery_so_uses_the_plain_return_path() -> None:
    cfg = SmtpConfig.model_validate({"return_path": "bounces@example.org"})
    assert envelope_sender(cfg, None, "<x@example.org>") == "bounces@example.org"


def test_maildir_writes_the_envelope_sender_as_return_path(tmp_path: Path) -> None:
    sender = verp_address("bounces@example.org", 3, "<x@example.org>")

    async def store() -> None:
        async with MaildirTransport(tmp_path / "box") as box:
            await box.send(sender, "a@example.org", MESSAGE)

    asyncio.run(store())
    (stored,) = list(mailbox.Maildir(tmp_path / "box", create=False))
    assert stored["Return-Path"] == f"<{sender}>"
    assert stored["Subject"] == "hi"
