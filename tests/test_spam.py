"""A digest as a spam filter scores it: Debian's SpamAssassin, local tests
only (no network, no Bayes learning), on the bytes a pass would send.

The digest must score 0.0 or less, and no rule may fire on our own markup:
the rules allowed are informational (``HTML_MESSAGE``), about a message not
yet relayed by any server (``NO_RECEIVED``, ``NO_RELAYS``: a real delivery
adds Received headers), or in the message's favour (``MAILING_LIST_MULTI``,
from the list headers). `.ci/run` installs spamassassin and sets
MAILER_TEST_REQUIRE_SPAMASSASSIN, so there these tests must run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mailer.pipeline.compose import build_message
from mailer.render import Renderer
from tests.test_headers import NOW, SENDER, UNSUBSCRIBE
from tests.test_render import realistic_digest

ALLOWED = frozenset({"HTML_MESSAGE", "NO_RECEIVED", "NO_RELAYS", "MAILING_LIST_MULTI"})


@pytest.fixture(scope="module")
def spamassassin() -> str:
    found = shutil.which("spamassassin")
    if found is None:
        reason = "spamassassin is not installed (apt-get install spamassassin)"
        if os.environ.get("MAILER_TEST_REQUIRE_SPAMASSASSIN"):
            pytest.fail(reason + ", but MAILER_TEST_REQUIRE_SPAMASSASSIN is set")
        pytest.skip(reason)
    return found


def scored(spamassassin: str, message: bytes, home: Path) -> tuple[float, set[str]]:
    """SpamAssassin's score and the rules that fired."""
    result = subprocess.run(
        [spamassassin, "-L", "-t", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
        input=message,
        capture_output=True,
        check=True,
        timeout=120,
        env={**os.environ, "HOME": str(home)},
    )
    output = result.stdout.decode("utf-8", errors="replace")
    status = re.search(r"^X-Spam-Status: (.*?)\n(?!\s)", output, re.M | re.S)
    assert status is not None, output[:2000]
    text = " ".join(status.group(1).split())
    score = re.search(r"score=(-?[\d.]+)", text)
    tests = re.search(r"tests=([A-Z0-9_,]*)", text)
    assert score is not None, text
    assert tests is not None, text
    return float(score.group(1)), {t for t in tests.group(1).split(",") if t}


def digest_bytes(unsubscribe_url: str | None) -> bytes:
    _, data, _ = build_message(
        Renderer(),
        realistic_digest(),
        NOW,
        sender=SENDER,
        sender_address="digest@example.org",
        unsubscribe_url=unsubscribe_url,
    )
    return data


@pytest.mark.parametrize("unsubscribe_url", [UNSUBSCRIBE, None], ids=["web", "mailto-only"])
def test_a_digest_scores_zero_or_less_with_no_rule_on_its_markup(
    spamassassin: str, tmp_path: Path, unsubscribe_url: str | None
) -> None:
    score, rules = scored(spamassassin, digest_bytes(unsubscribe_url), tmp_path)
    assert score <= 0.0, rules
    assert rules <= ALLOWED, rules - ALLOWED
