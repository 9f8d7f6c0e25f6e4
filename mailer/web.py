"""One-click unsubscribe (RFC 8058): the small HTTP endpoint for signed links.

The links and their tokens are made and checked by mailer.tokens.
GET only shows a confirmation page (mail scanners prefetch links); POST
unsubscribes at once and answers 200 again when replayed. No redirects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from html import escape

from aiohttp import web

from mailer.errors import WebError
from mailer.store import Store
from mailer.tokens import read_token

log = logging.getLogger("mailer")

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
    store: Store, *, secret: Callable[[], str], clock: Callable[[], datetime]
) -> web.Application:
    """``secret`` is read per request, so a reloaded configuration takes effect."""

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

    app = web.Application()
    app.router.add_get("/unsubscribe/{token}", confirm)
    app.router.add_post("/unsubscribe/{token}", unsubscribe)
    app.router.add_get("/healthz", healthz)
    return app


# --- serving ------------------------------------------------------------------


class WebServer:
    """The app on ``host:port`` inside the running event loop (the daemon's)."""

    def __init__(self, app: web.Application, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.listen = listen
        self.host = host.strip("[]")
        self.requested_port = int(port)
        # No access log: request lines carry tokens; unsubscribes are logged by the handler.
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.requested_port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise WebError(
                f"web.listen = {self.listen!r}: cannot listen there: {exc.strerror or exc}",
                hint="pick a free port, or another address, in the [web] section",
            ) from exc
        log.info("unsubscribe endpoint on http://%s:%d/", self.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (the real one when ``listen`` asked for port 0)."""
        address = self.runner.addresses[0]
        return int(address[1])

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_web(
    listen: str, store: Store, *, secret: Callable[[], str], clock: Callable[[], datetime]
) -> WebServer | None:
    """Serve the endpoint when ``listen`` is set; None when it is empty."""
    if not listen:
        return None
    server = WebServer(make_app(store, secret=secret, clock=clock), listen)
    await server.start()
    return server
