"""End to end against golden files: the bundled sample dumps and the example
configuration in, the text part of each Maildir digest out.

A change to parsing, matching, ranking, grouping or rendering that alters
what a reader gets shows here as a diff. When the change is intended,
regenerate with ``MAILER_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py``
and review the diff of ``tests/golden/`` like code.
"""

from __future__ import annotations

import asyncio
import mailbox
import os
import shutil
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailer.config import parse_config
from mailer.delivery import make_transport
from mailer.pipeline import Pipeline
from mailer.store import Store
from tests.conftest import ROOT, SEEDS

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def digests_of_the_sample_dumps(tmp_path: Path) -> dict[str, str]:
    """One pass of the example configuration over the sample dumps: the text
    part of each digest, by recipient address."""
    shutil.copytree(SEEDS, tmp_path / "seeds")
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    config = parse_config(text, source="config.example.toml", base_dir=tmp_path)
    store = Store(config.database.url)
    try:
        pipeline = Pipeline(config, store, lambda: make_transport(config), clock=lambda: NOW)
        report = asyncio.run(pipeline.run_pass())
    finally:
        store.close()
    assert report.sent == len(config.subscribers)
    parts = {}
    for message in mailbox.Maildir(tmp_path / "outbox", create=False):
        parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        body = parsed.get_body(("plain",))
        assert body is not None
        parts[parsed["To"].addresses[0].addr_spec] = body.get_content()
    return parts


@pytest.fixture(scope="module")
def digests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return digests_of_the_sample_dumps(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("address", ["ada@example.org", "grace@example.org"])
def test_sample_digest_text_matches_its_golden_file(digests: dict[str, str], address: str) -> None:
    golden = GOLDEN / f"seeds-{address.partition('@')[0]}.txt"
    if os.environ.get("MAILER_UPDATE_GOLDEN"):
        golden.write_text(digests[address], encoding="utf-8")
    assert digests[address] == golden.read_text(encoding="utf-8")
