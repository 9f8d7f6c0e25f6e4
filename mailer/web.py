"""One-click unsubscribe (RFC 8058): the small HTTP endpoint for signed links.

The links and their tokens are made and checked by mailer.tokens.
GET only shows a confirmation page (mail scanners prefetch links); POST
unsubscribes at once and answers 200 again when replayed. No redirects.

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
from mailer.store import Store
from mailer.tokens import read_token

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
        log.info("unsubscribe endpoint on http://%s:%d/", self.host, self.port)

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
