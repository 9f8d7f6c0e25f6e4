"""The small HTTP endpoint for a digest's signed links: one-click
unsubscribe (RFC 8058) and each paper's "more like this" / "not for me".

The links and their tokens are made and checked by mailer.tokens.
GET only shows a confirmation page (mail scanners prefetch links); POST
unsubscribes, or records the mark, at once, and answers 200 again when
replayed. No redirects.

The endpoint faces the internet inside the daemon's process, so hostile or
broken clients must not cost it file descriptors, memory or log space: a
connection has ``HEADER_TIMEOUT`` seconds to send its request headers (and
as long again for a body), at most ``MAX_CONNECTIONS`` are open at once (a
new one pushes out the oldest connection that is not in a request, so idle
or slow clients cannot lock real ones out; with every one in a request, the
new one is closed as soon as it is accepted), requests are small,
and what is refused or malformed is counted into one summary log line per
``SUMMARY_SECONDS``, not logged one by one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from html import escape
from typing import Any

from aiohttp import hdrs, web

from mailer.errors import WebError
from mailer.selfservice.app import MAX_FORM_BYTES, SelfService
from mailer.store import MarkKind, MarkOutcome, Store
from mailer.tokens import read_feedback_token, read_token

log = logging.getLogger("mailer")

HEADER_TIMEOUT = 10.0  # seconds to send the request headers; also the idle keep-alive
BODY_TIMEOUT = 10.0  # seconds to finish sending a body the handler did not read
MAX_CONNECTIONS = 256  # open at once
MAX_REQUEST_BYTES = 8 * 1024  # request body
MAX_LINE_BYTES = 4096  # request line, and each header line
MAX_HEADERS = 32
BACKLOG = 128  # connections the kernel queues before we accept them
SUMMARY_SECONDS = 60.0
SERVER_NAME = "mailer"  # the Server header, without a version to fingerprint

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


def mask(email: str) -> str:
    """a**@example.org: enough for the owner to recognise, little for anyone else."""
    local, _, domain = email.rpartition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 1)}@{domain}"


# --- the app ------------------------------------------------------------------


def _page(title: str, body: str, status: int = 200) -> web.Response:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:3em auto;"
        "padding:0 1em}button{font-size:1em;padding:.5em 1.2em}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(
        text=html, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS
    )


_MARKS = {
    MarkKind.MORE: ("More like this", "Show more papers like"),
    MarkKind.LESS: ("Not for me", "Show fewer papers like"),
}
_ABOUT_MARKS = (
    "Your marks order your digests: from three &ldquo;more like this&rdquo; marks on, "
    "papers like those you marked come first, papers like those you marked &ldquo;not "
    "for me&rdquo; come last, and a few papers your subscriptions missed may be "
    "suggested."
)


def _not_found() -> web.Response:
    return _page("Not found", "<p>This link is not valid.</p>", status=404)


def make_app(
    store: Store,
    *,
    secret: Callable[[], str],
    clock: Callable[[], datetime],
    self_service: SelfService | None = None,
) -> web.Application:
    """``secret`` is read per request, so a reloaded configuration takes effect.
    With ``self_service``, the readers' pages are served too (mailer.selfservice),
    their forms up to MAX_FORM_BYTES."""

    async def confirm(request: web.Request) -> web.Response:
        email = read_token(request.match_info["token"], secret())
        if email is None:
            return _not_found()
        return _page(
            "Unsubscribe",
            f"<p>Stop sending paper digests to <b>{escape(mask(email))}</b>?</p>"
            '<form method="post"><button type="submit" name="List-Unsubscribe" '
            'value="One-Click">Unsubscribe</button></form>',
        )

    async def unsubscribe(request: web.Request) -> web.Response:
        email = read_token(request.match_info["token"], secret())
        if email is None:
            return _not_found()
        known = await asyncio.to_thread(store.unsubscribe, email, clock())
        log.info("unsubscribed subscriber=%s known=%s", email, known)
        if not known:
            return _page(
                "Not subscribed",
                f"<p>No digests are sent to <b>{escape(mask(email))}</b>: "
                "there is no subscriber with this address.</p>",
            )
        return _page(
            "You are unsubscribed",
            f"<p>No more digests will be sent to <b>{escape(mask(email))}</b>.</p>",
        )

    async def feedback_target(request: web.Request) -> tuple[str, int, str, MarkKind] | None:
        """(address, paper id, title, mark) a genuine feedback link names."""
        found = read_feedback_token(request.match_info["token"], secret())
        if found is None:
            return None
        email, paper_id = found
        paper = await asyncio.to_thread(store.paper, paper_id)
        if paper is None:
            return None
        return email, paper_id, " ".join(paper.title.split()), MarkKind(request.match_info["kind"])

    async def feedback_confirm(request: web.Request) -> web.Response:
        target = await feedback_target(request)
        if target is None:
            return _not_found()
        email, _, title, kind = target
        heading, question = _MARKS[kind]
        return _page(
            heading,
            f"<p>{question} <b>{escape(title)}</b> in the digests sent to "
            f"<b>{escape(mask(email))}</b>?</p>"
            f'<form method="post"><button type="submit">{heading}</button></form>'
            f"<p>{_ABOUT_MARKS}</p>",
        )

    async def feedback_record(request: web.Request) -> web.Response:
        target = await feedback_target(request)
        if target is None:
            return _not_found()
        email, paper_id, title, kind = target
        outcome = await asyncio.to_thread(store.record_mark, email, paper_id, kind, clock())
        log.info(
            "feedback subscriber=%s paper=%d mark=%s outcome=%s",
            email,
            paper_id,
            kind.value,
            outcome.value.replace(" ", "_"),
        )
        if outcome is MarkOutcome.NO_SUBSCRIBER:
            return _page(
                "Not subscribed",
                f"<p>No digests are sent to <b>{escape(mask(email))}</b>: "
                "there is no subscriber with this address.</p>",
            )
        if outcome is MarkOutcome.NO_PAPER:
            return _not_found()
        done = "more" if kind is MarkKind.MORE else "fewer"
        return _page(
            "Noted",
            f"<p>Noted: {done} papers like <b>{escape(title)}</b>.</p><p>{_ABOUT_MARKS}</p>",
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    async def limit_body(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        limit = MAX_FORM_BYTES if request.match_info.route in forms else MAX_REQUEST_BYTES
        if (request.content_length or 0) > limit:
            return web.Response(status=413, text="request too large", headers=_HEADERS)
        return await handler(request)

    async def server_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[hdrs.SERVER] = SERVER_NAME

    app = web.Application(
        client_max_size=MAX_FORM_BYTES if self_service else MAX_REQUEST_BYTES,
        middlewares=[web.middleware(limit_body)],
    )
    app.on_response_prepare.append(server_header)
    app.router.add_get("/unsubscribe/{token}", confirm)
    app.router.add_post("/unsubscribe/{token}", unsubscribe)
    app.router.add_get("/feedback/{token}/{kind:(more|less)}", feedback_confirm)
    app.router.add_post("/feedback/{token}/{kind:(more|less)}", feedback_record)
    app.router.add_get("/healthz", healthz)
    if self_service is not None:
        self_service.install(app)
    forms = self_service.routes if self_service else set()
    return app


# --- serving ------------------------------------------------------------------


class _Tally:
    """What the endpoint refused or could not parse, logged as one summary
    line per ``SUMMARY_SECONDS`` instead of a line (and traceback) each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def summary(self) -> None:
        if self.counts:
            fields = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
            log.warning("web endpoint refused or dropped clients: %s", fields)
            self.counts.clear()


class _QuietServerLog(logging.Filter):
    """Counts aiohttp's per-request error lines (malformed requests) and
    asyncio's failed accepts instead of letting each through with a traceback."""

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Error handling request"):
            self.tally.counts["bad_requests"] += 1
            return False
        if message.startswith("socket.accept() out of system resource"):
            self.tally.counts["accept_errors"] += 1  # asyncio's, when out of descriptors
            return False
        return True


class _Handler(web.RequestHandler):
    """aiohttp's per-connection protocol, counted against the connection
    limit, with the Server header on its own error responses too."""

    def __init__(self, owner: WebServer, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.owner = owner
        self.busy = 0  # requests being handled now

    def connection_lost(self, exc: BaseException | None) -> None:
        self.owner.connections.pop(self, None)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        response.headers[hdrs.SERVER] = SERVER_NAME
        return response


@web.middleware
async def _busy(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Mark the connection as in a request, so it is not pushed out for room."""
    protocol = request.protocol
    if not isinstance(protocol, _Handler):
        return await handler(request)
    protocol.busy += 1
    try:
        return await handler(request)
    finally:
        protocol.busy -= 1


class _Refuse(asyncio.Protocol):
    """A connection over the limit: closed at once, counted, not logged."""

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tally.counts["over_connection_limit"] += 1
        transport.close()


class WebServer:
    """The app on ``host:port`` inside the running event loop (the daemon's)."""

    def __init__(self, app: web.Application, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.listen = listen
        self.host = host.strip("[]")
        self.requested_port = int(port)
        # No access log: request lines carry tokens; unsubscribes are logged by the handler.
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        # Open connections, oldest first.
        self.connections: dict[_Handler, None] = {}
        self.tally = _Tally()
        app.middlewares.append(_busy)
        self.server_log = logging.getLogger("mailer.web.server")
        self._quiet = _QuietServerLog(self.tally)
        self._server: asyncio.Server | None = None
        self._summaries: asyncio.Task[None] | None = None

    def _protocol(self) -> asyncio.Protocol:
        """One accepted connection: aiohttp's handler while under the limit."""
        server = self.runner.server
        if server is None or (len(self.connections) >= MAX_CONNECTIONS and not self._evict()):
            return _Refuse(self.tally)
        handler = _Handler(
            self,
            server,
            loop=asyncio.get_running_loop(),
            access_log=None,
            logger=self.server_log,
            # aiohttp arms this timer when a connection opens and after each response,
            # and closes the connection if no complete request head has arrived by then.
            keepalive_timeout=HEADER_TIMEOUT,
            lingering_time=BODY_TIMEOUT,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
        )
        self.connections[handler] = None
        return handler

    def _evict(self) -> bool:
        """Close the oldest connection not in a request, to make room."""
        idle = next((h for h in self.connections if not h.busy), None)
        if idle is None:
            return False
        del self.connections[idle]
        idle.force_close()
        self.tally.counts["idle_closed_for_room"] += 1
        return True

    async def start(self) -> None:
        await self.runner.setup()
        self.server_log.addFilter(self._quiet)
        logging.getLogger("asyncio").addFilter(self._quiet)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._protocol, self.host, self.requested_port, backlog=BACKLOG, reuse_address=True
            )
        except OSError as exc:
            await self.stop()
            raise WebError(
                f"web.listen = {self.listen!r}: cannot listen there: {exc.strerror or exc}",
                hint="pick a free port, or another address, in the [web] section",
            ) from exc
        self._summaries = asyncio.create_task(self._summarise())
        log.info("web endpoint (unsubscribe, feedback) on http://%s:%d/", self.host, self.port)

    async def _summarise(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_SECONDS)
            self.tally.summary()

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._summaries is not None:
            self._summaries.cancel()
        if self._server is not None:
            self._server.close()
        await self.runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()
        self.tally.summary()
        self.server_log.removeFilter(self._quiet)
        logging.getLogger("asyncio").removeFilter(self._quiet)


async def start_web(
    listen: str,
    store: Store,
    *,
    secret: Callable[[], str],
    clock: Callable[[], datetime],
    self_service: SelfService | None = None,
) -> WebServer | None:
    """Serve the endpoint when ``listen`` is set; None when it is empty."""
    if not listen:
        return None
    app = make_app(store, secret=secret, clock=clock, self_service=self_service)
    server = WebServer(app, listen)
    await server.start()
    return server
