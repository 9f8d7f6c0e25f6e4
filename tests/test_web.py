"""The unsubscribe endpoint (RFC 8058): signed tokens, and a real aiohttp
server on a loopback port over a real database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import urllib.response
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from mailer.config import parse_config
from mailer.errors import ConfigError, WebError
from mailer.store import Store
from mailer.tokens import make_token, read_token
from mailer.web import (
    BACKLOG,
    HEADER_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_REQUEST_BYTES,
    WebServer,
    make_app,
    mask,
    start_web,
)
from tests.conftest import free_port
from tests.test_cli import ENV, write_config
from tests.waiting import passes, wait_for, wait_for_fresh_passes

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


# --- hostile clients against the running daemon ------------------------------------------

SLOW_CLIENTS = 1100
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@contextlib.contextmanager
def descriptors(wanted: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (within the hard
    limit) for the test's client sockets, and put it back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if limit < wanted:
        pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


def healthz(port: int) -> urllib.response.addinfourl:
    response: urllib.response.addinfourl = urllib.request.urlopen(
        f"http://127.0.0.1:{port}/healthz", timeout=5
    )
    return response


@pytest.mark.slow
def test_slow_header_clients_neither_stall_the_daemon_nor_flood_its_log(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, interval=0.3)
    with config.open("a") as f:
        f.write(f'[web]\nlisten = "127.0.0.1:{port}"\nsecret = "{SECRET}"\n')
    log_file = tmp_path / "daemon.log"
    command = [sys.executable, "-m", "mailer", "--log-format", "json", "--config", str(config)]
    with log_file.open("wb") as log_out:
        proc = subprocess.Popen([*command, "run"], cwd=tmp_path, env=ENV, stderr=log_out)
    clients: list[socket.socket] = []
    try:
        wait_for(lambda: passes(tmp_path) >= 1, what="the daemon's first pass")
        with descriptors(SLOW_CLIENTS + 256):
            started = time.monotonic()
            for _ in range(SLOW_CLIENTS):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                clients.append(sock)
                with contextlib.suppress(OSError):  # may be closed for room already
                    sock.sendall(PARTIAL_HEAD)
            for sock in clients:
                sock.setblocking(False)
            # Held: the connection limit, plus at most one accept batch (the backlog)
            # whose pushed-out and refused sockets close on the next loop turn,
            # which a busy machine may delay: a few seconds, not for good.
            wait_for(
                lambda: (
                    len(list(Path(f"/proc/{proc.pid}/fd").iterdir()))
                    < MAX_CONNECTIONS + BACKLOG + 64
                ),
                timeout=5,
                what="the daemon to hold no more than its connection limit and one backlog",
            )

            with healthz(port) as response:
                assert response.read() == b"ok"
                assert response.headers["Server"] == "mailer"
            wait_for_fresh_passes(tmp_path, 2)
            wait_for(
                lambda: all(closed_by_server(s) for s in clients),
                timeout=HEADER_TIMEOUT + 10,
                what="the server to close every slow-header connection",
            )
            assert time.monotonic() - started < HEADER_TIMEOUT + 10
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        for sock in clients:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert log_file.stat().st_size < 20_000
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    web_lines = [e for e in events if e["logger"].startswith(("aiohttp", "asyncio", "mailer.web"))]
    assert web_lines == []
    summaries = [e for e in events if "web endpoint refused" in e["message"]]
    assert len(summaries) == 1
    assert summaries[0]["idle_closed_for_room"] >= SLOW_CLIENTS - MAX_CONNECTIONS


def test_the_server_header_names_no_version(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        for path in ("/healthz", "/nowhere", f"/unsubscribe/{make_token('a@b.org', SECRET)}"):
            async with session.get(base + path) as response:
                assert response.headers["Server"] == "mailer"

    serve(store, scenario)


def test_a_malformed_request_gets_400_and_no_version(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        head = (await reader.read(4096)).decode("latin-1")
        writer.close()
        assert head.split("\r\n", 1)[0].endswith(" 400 Bad Request")
        assert "\r\nServer: mailer\r\n" in head
        assert "aiohttp" not in head

    serve(store, scenario)


def test_a_request_body_over_the_limit_is_refused(store: Store) -> None:
    async def scenario(session: aiohttp.ClientSession, base: str) -> None:
        body = b"x" * (MAX_REQUEST_BYTES + 1)
        async with session.post(link(base), data=body) as response:
            assert response.status == 413
        assert store.subscriber_states()["ada@example.org"].unsubscribed_at is None

    serve(store, scenario)
