"""The unsubscribe endpoint (RFC 8058): signed tokens, and a real aiohttp
server on a loopback port over a real database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from mailer.config import parse_config
from mailer.errors import ConfigError, WebError
from mailer.store import Store
from mailer.tokens import make_token, read_token
from mailer.web import WebServer, make_app, mask, start_web

SECRET = "s3cret-for-tests-only-0123456789"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


# --- tokens -------------------------------------------------------------------


def test_token_round_trips_to_its_address() -> None:
    assert read_token(make_token("ada@example.org", SECRET), SECRET) == "ada@example.org"


def test_token_is_url_safe_and_independent_of_address_case() -> None:
    token = make_token("Ada@Example.org", SECRET)
    assert token == make_token("ada@example.org", SECRET)
    assert all(c.isalnum() or c in "-_." for c in token)


def test_token_made_with_another_secret_is_rejected() -> None:
    assert read_token(make_token("ada@example.org", "another-secret-0123456"), SECRET) is None


def test_token_with_a_swapped_address_is_rejected() -> None:
    ada = make_token("ada@example.org", SECRET)
    grace = make_token("grace@example.org", SECRET)
    forged = grace.partition(".")[0] + "." + ada.partition(".")[2]
    assert read_token(forged, SECRET) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t.partition(".")[0],
        lambda t: t.partition(".")[0] + ".",
        lambda t: "." + t.partition(".")[2],
        lambda t: t + "x",
        lambda t: "",
        lambda t: "é" + t,
    ],
    ids=["last-char", "no-mac", "empty-mac", "no-address", "longer", "empty", "non-ascii"],
)
def test_tampered_token_is_rejected(mangle: Callable[[str], str]) -> None:
    assert read_token(mangle(make_token("ada@example.org", SECRET)), SECRET) is None


def test_no_token_verifies_without_a_secret() -> None:
    assert read_token(make_token("ada@example.org", ""), "") is None


def test_mask_keeps_the_first_letter_and_the_domain() -> None:
    assert mask("ada@example.org") == "a**@example.org"
    assert mask("a@example.org") == "a*@example.org"


# --- configuration ----------------------------------------------------------------


def test_listen_without_a_secret_is_a_config_error_naming_web_secret() -> None:
    with pytest.raises(ConfigError, match=r"web\.secret"):
        parse_config('[web]\nlisten = "127.0.0.1:8080"', source="t.toml")


def test_secret_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_WEB__SECRET", SECRET)
    config = parse_config('[web]\nlisten = "127.0.0.1:8080"', source="t.toml")
    assert config.web.secret.get_secret_value() == SECRET


@pytest.mark.parametrize("url", ["http://digest.example.org", "ftp://x.org", "digest.example.org"])
def test_base_url_must_be_https(url: str) -> None:
    with pytest.raises(ConfigError, match=r"web\.base_url"):
        parse_config(f'[web]\nbase_url = "{url}"\nsecret = "{SECRET}"', source="t.toml")


def test_base_url_may_be_plain_http_on_localhost_and_loses_its_trailing_slash() -> None:
    config = parse_config(
        f'[web]\nbase_url = "http://127.0.0.1:8080/"\nsecret = "{SECRET}"', source="t.toml"
    )
    assert config.web.base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("listen", ["8080", "localhost", "127.0.0.1:http", "127.0.0.1:70000"])
def test_listen_must_be_host_and_port(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"web\.listen"):
        parse_config(f'[web]\nlisten = "{listen}"\nsecret = "{SECRET}"', source="t.toml")


# --- the endpoint ------------------------------------------------------------------


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    store.sync_subscribers(
        [("ada@example.org", "Ada", [("Diffusion", "diffusion")]), ("grace@example.org", "", [])],
        NOW,
    )
    yield store
    store.close()


Client = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


def serve(store: Store, scenario: Client) -> None:
    """Run ``scenario`` against the endpoint listening on a free loopback port."""

    async def main() -> None:
        server = WebServer(make_app(store, secret=lambda: SECRET, clock=lambda: NOW), "127.0.0.1:0")
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(session, f"http://127.0.0.1:{server.port}")
        finally:
            await server.stop()

    asyncio.run(main())


def link(base: str, email: str = "ada@example.org") -> str:
    return f"{base}/unsubscribe/{make_token(email, SECRET)}"


def test_get_shows_a_confirmation_form_and_changes_nothing(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for _ in range(3):
            async with session.get(link(base), allow_redirects=False) as response:
                assert response.status == 200
                assert response.headers["Cache-Control"] == "no-store"
                page = await response.text()
        assert '<form method="post">' in page
        assert "a**@example.org" in page

    serve(store, scenario)
    assert store.unsubscribed_at("ada@example.org") is None


def test_head_changes_nothing(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.head(link(base), allow_redirects=False) as response:
            assert response.status == 200

    serve(store, scenario)
    assert store.unsubscribed_at("ada@example.org") is None


def test_one_click_post_unsubscribes_at_once(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(
            link(base), data={"List-Unsubscribe": "One-Click"}, allow_redirects=False
        ) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "no-store"
            assert "You are unsubscribed" in await response.text()

    serve(store, scenario)
    assert store.unsubscribed_at("ada@example.org") == NOW
    assert set(store.active_subscriber_ids()) == {"grace@example.org"}


def test_replayed_post_answers_200_and_keeps_the_first_time(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for _ in range(2):
            async with session.post(link(base), allow_redirects=False) as response:
                assert response.status == 200

    store.unsubscribe("ada@example.org", datetime(2026, 1, 1, tzinfo=UTC))
    serve(store, scenario)
    assert store.unsubscribed_at("ada@example.org") == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_forged_token_is_404_without_detail_and_changes_nothing(store: Store, method: str) -> None:
    forged = make_token("ada@example.org", "not-the-secret-0123456789")

    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        url = f"{base}/unsubscribe/{forged}"
        async with session.request(method, url, allow_redirects=False) as response:
            assert response.status == 404
            body = await response.text()
        assert "ada" not in body
        assert "<form" not in body

    serve(store, scenario)
    assert store.unsubscribed_at("ada@example.org") is None


def test_other_paths_and_a_trailing_slash_are_404_not_redirects(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for url in (link(base) + "/", f"{base}/unsubscribe/", f"{base}/"):
            async with session.post(url, allow_redirects=False) as response:
                assert response.status == 404, url

    serve(store, scenario)
    assert store.unsubscribed_at("ada@example.org") is None


def test_healthz_answers_ok(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.get(f"{base}/healthz") as response:
            assert (response.status, await response.text()) == (200, "ok")

    serve(store, scenario)


def test_valid_token_for_an_unknown_address_still_answers_200(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        async with session.post(link(base, "nobody@example.org")) as response:
            assert response.status == 200

    serve(store, scenario)
    assert set(store.active_subscriber_ids()) == {"ada@example.org", "grace@example.org"}


def test_empty_listen_serves_nothing(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        server = asyncio.run(start_web("", store, secret=lambda: SECRET, clock=lambda: NOW))
    finally:
        store.close()
    assert server is None


def test_a_busy_port_is_an_error_naming_web_listen(store: Store) -> None:
    async def main() -> None:
        first = WebServer(make_app(store, secret=lambda: SECRET, clock=lambda: NOW), "127.0.0.1:0")
        await first.start()
        try:
            with pytest.raises(WebError, match=r"web\.listen = '127\.0\.0\.1:\d+'"):
                await start_web(
                    f"127.0.0.1:{first.port}", store, secret=lambda: SECRET, clock=lambda: NOW
                )
        finally:
            await first.stop()

    asyncio.run(main())
