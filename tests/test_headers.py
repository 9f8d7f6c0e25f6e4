"""The headers every digest carries so mailbox providers treat it as the
list it is: List-Id, List-Help, Auto-Submitted, Precedence, Feedback-ID,
List-Unsubscribe, and a Message-ID that does not contain the From address."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from mailer.mime import new_message_id
from mailer.pipeline.compose import build_message
from mailer.render import Renderer
from tests.test_render import realistic_digest

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SENDER = "Paper Digest <digest@example.org>"
UNSUBSCRIBE = "https://digest.example.org/unsubscribe/token"


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def digest_message(
    renderer: Renderer,
    *,
    sender: str = SENDER,
    unsubscribe_url: str | None = UNSUBSCRIBE,
) -> tuple[str, EmailMessage]:
    """(Message-ID as made, message as a receiver parses it) of a real digest."""
    address = sender.rpartition("<")[2].rstrip(">")
    message_id, data, _ = build_message(
        renderer,
        realistic_digest(),
        NOW,
        sender=sender,
        sender_address=address,
        unsubscribe_url=unsubscribe_url,
    )
    parsed = message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return message_id, parsed


def test_list_id_names_the_digest_list_under_the_sender_domain_with_its_name(
    renderer: Renderer,
) -> None:
    _, msg = digest_message(renderer)
    assert str(msg["List-Id"]) == "Paper Digest <digest.example.org>"
    assert re.fullmatch(r".*<[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+>", str(msg["List-Id"]))


def test_list_id_quotes_a_sender_name_with_specials(renderer: Renderer) -> None:
    _, msg = digest_message(renderer, sender='"Papers, Daily" <digest@example.org>')
    assert str(msg["List-Id"]) == '"Papers, Daily" <digest.example.org>'


def test_list_help_is_a_mailto_asking_for_help(renderer: Renderer) -> None:
    _, msg = digest_message(renderer)
    assert str(msg["List-Help"]) == "<mailto:digest@example.org?subject=help>"


def test_digest_is_marked_auto_generated_bulk_mail(renderer: Renderer) -> None:
    _, msg = digest_message(renderer)
    assert str(msg["Auto-Submitted"]) == "auto-generated"
    assert str(msg["Precedence"]) == "bulk"


def test_feedback_id_is_stable_and_names_campaign_and_sender(renderer: Renderer) -> None:
    _, first = digest_message(renderer)
    _, second = digest_message(renderer, unsubscribe_url=None)
    assert str(first["Feedback-ID"]) == "digest:mailer:example.org"
    assert first["Feedback-ID"] == second["Feedback-ID"]
    assert len(str(first["Feedback-ID"]).split(":")) >= 2


def test_list_unsubscribe_has_the_https_link_and_the_mailto_when_web_is_set(
    renderer: Renderer,
) -> None:
    _, msg = digest_message(renderer)
    links = re.findall(r"<([^<>]*)>", str(msg["List-Unsubscribe"]))
    assert links[0] == UNSUBSCRIBE
    assert links[1].startswith("mailto:digest@example.org?subject=unsubscribe")
    assert str(msg["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"


def test_list_unsubscribe_has_the_mailto_without_web(renderer: Renderer) -> None:
    _, msg = digest_message(renderer, unsubscribe_url=None)
    (link,) = re.findall(r"<([^<>]*)>", str(msg["List-Unsubscribe"]))
    assert link.startswith("mailto:digest@example.org?subject=unsubscribe")
    assert "List-Unsubscribe-Post" not in msg


def test_message_id_does_not_contain_the_from_address(renderer: Renderer) -> None:
    ids = {digest_message(renderer)[0] for _ in range(50)}
    assert len(ids) == 50
    for message_id in ids:
        assert "digest@example.org" not in message_id.lower()
        assert re.fullmatch(r"<20261127T090000\.[0-9a-f]{20}@example\.org>", message_id)


def test_message_id_in_the_header_is_the_one_stored(renderer: Renderer) -> None:
    message_id, msg = digest_message(renderer)
    assert str(msg["Message-ID"]) == message_id


@pytest.mark.parametrize("local", ["a", "0", "f0"])
def test_message_id_avoids_a_sender_whose_local_part_looks_like_hex(local: str) -> None:
    for _ in range(2000):
        message_id = new_message_id(f"{local}@example.org", NOW)
        assert f"{local}@example.org" not in message_id.lower()
