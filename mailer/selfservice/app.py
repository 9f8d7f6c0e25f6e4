"""The readers' pages on the daemon's web server (mailer.web), when
``[web] self_service = true``; with it false (the default), every one of
them answers 404 like any unknown path. The flag is read per request, so a
reloaded configuration turns them on or off at once.

- ``GET/POST /subscribe``: the sign-up form; POST ``action=check`` shows the
  queries' checks and previews, ``action=subscribe`` signs up.
- ``POST /check``: one query's check and preview as an HTML fragment, for the
  live check of the script (the forms work without it).
- ``GET/POST /confirm/{token}``: GET shows what is confirmed and a button;
  POST confirms (links in mail are prefetched by scanners).
- ``GET/POST /manage/{token}``: the reader's own page.
- ``GET /static/site.css``, ``/static/site.js``.

A sign-up answers at once with the same page whether or not the address
already subscribes, and is stored and mailed afterwards, in order, by one
worker task: what the browser sees and how long it takes cannot tell the
two apart. Every POST needs the CSRF field that goes with the browser's
cookie, and a same-site ``Origin`` when the browser sends one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from mailer.addresses import address_key
from mailer.config import Config
from mailer.dkim import DkimSigner
from mailer.errors import MailerError
from mailer.selfservice.forms import SubscriptionForm, form_for, read_form
from mailer.selfservice.limits import HourlyLimit
from mailer.selfservice.links import (
    CONFIRM_HOURS,
    confirm_url,
    csrf_ok,
    csrf_token,
    manage_url,
    new_csrf_cookie,
    new_nonce,
    read_confirm_token,
    read_manage_token,
)
from mailer.selfservice.mails import notice
from mailer.selfservice.pages import Pages
from mailer.selfservice.preview import Check, RecentPapers, check_query
from mailer.store import Profile, Store, WebSubscriber

log = logging.getLogger("mailer")

MAX_FORM_BYTES = 64 * 1024  # a form with many long queries; the endpoint's own limit is 8 KiB
CHECKS_PER_HOUR = 3000  # live checks from one client address
MAX_PAUSE_DAYS = 366
QUEUED_SIGN_UPS = 1000  # waiting to be stored and mailed; more are turned away
STOP_SECONDS = 10.0  # at stop, for the sign-ups already answered to be stored
CSRF_COOKIE = "mailer_csrf"
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

_HEADERS = {
    "Cache-Control": "no-store",
    # A manage link's token must not leak to other sites; same-origin (not
    # no-referrer) so that the browser still sends the Origin of a form's POST.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
_STATIC_TYPES = {"site.css": "text/css", "site.js": "text/javascript"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Notice:
    """A line at the top of a page saying what just happened."""

    text: str
    kind: str = "ok"  # ok | error


class SelfService:
    """The pages, their limits and the sign-up worker, over one store."""

    def __init__(
        self,
        store: Store,
        *,
        config: Callable[[], Config],
        clock: Callable[[], datetime],
        dkim: Callable[[], DkimSigner | None] = lambda: None,
        wake: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
        pages: Pages | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.dkim = dkim
        self.wake = wake
        self.pages = pages or Pages()
        self.recent = RecentPapers(store.papers_since, clock, monotonic)
        self.by_client = HourlyLimit(lambda: config().web.signups_per_ip_per_hour, monotonic)
        self.by_address = HourlyLimit(lambda: config().web.signups_per_address_per_hour, monotonic)
        self.checks = HourlyLimit(lambda: CHECKS_PER_HOUR, monotonic)
        self.routes: set[AbstractRoute] = set()
        self._jobs: asyncio.Queue[Profile] | None = None
        self._worker: asyncio.Task[None] | None = None

    # --- wiring -----------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Add the pages to ``app``; the sign-up worker runs while it does."""
        pages: dict[str, dict[str, Handler]] = {
            "/subscribe": {"GET": self.subscribe_page, "POST": self.subscribe},
            "/check": {"POST": self.check},
            "/confirm/{token}": {"GET": self.confirm_page, "POST": self.confirm},
            "/manage/{token}": {"GET": self.manage_page, "POST": self.manage},
            "/static/{name}": {"GET": self.static},
        }
        for path, methods in pages.items():
            self.routes.add(app.router.add_route("*", path, self._on(methods)))
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    def _on(self, methods: Mapping[str, Handler]) -> Handler:
        """The handler for the request's method when the pages are on;
        otherwise 404 for any method, as for a path that does not exist."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.config().web.self_service:
                raise web.HTTPNotFound
            handler = methods.get("GET" if request.method == "HEAD" else request.method)
            if handler is None:
                raise web.HTTPMethodNotAllowed(request.method, list(methods))
            return await handler(request)

        return guarded

    async def _start(self, app: web.Application) -> None:
        self._jobs = asyncio.Queue(QUEUED_SIGN_UPS)
        self._worker = asyncio.create_task(self._work(self._jobs))
        web_config = self.config().web
        if web_config.self_service:
            log.info("readers' pages on %s/subscribe", web_config.base_url)

    async def _stop(self, app: web.Application) -> None:
        """Store and mail the sign-ups already answered, then stop the worker."""
        if self._jobs is not None:
            try:
                await asyncio.wait_for(self._jobs.join(), STOP_SECONDS)
            except TimeoutError:
                log.warning("stopping with %d web sign-ups not stored", self._jobs.qsize())
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def drained(self) -> None:
        """Return once the sign-ups answered so far are stored and mailed."""
        if self._jobs is not None:
            await self._jobs.join()

    async def _work(self, jobs: asyncio.Queue[Profile]) -> None:
        while True:
            profile = await jobs.get()
            try:
                await asyncio.to_thread(self._sign_up, profile)
                self.wake()
            except MailerError as exc:
                log.error("web sign-up subscriber=%s not stored: %s", profile.email, exc)
            except Exception:
                log.exception("web sign-up subscriber=%s failed", profile.email)
            finally:
                jobs.task_done()

    def _sign_up(self, profile: Profile) -> None:
        """Store a sign-up and queue its mail: the confirmation link, or the
        manage link for an address that already subscribes."""
        config = self.config()
        web_config, now = config.web, self.clock()
        secret = web_config.secret.get_secret_value()
        outcome = self.store.web.sign_up(profile, now, new_nonce())
        if outcome.kind == "confirm":
            assert outcome.nonce is not None
            link = confirm_url(
                web_config.base_url, outcome.subscriber_id, outcome.nonce, now, secret
            )
        else:
            link = manage_url(web_config.base_url, outcome.email, secret)
        message = notice(
            self.pages,
            outcome.kind,
            subscriber_id=outcome.subscriber_id,
            to=outcome.email,
            link=link,
            now=now,
            sender=config.smtp.sender,
            sender_address=config.smtp.sender_address,
            dkim=self.dkim(),
        )
        self.store.enqueue_many([message], now)
        log.info(
            "web sign-up subscriber=%s mailed=%s message_id=%s",
            outcome.email,
            outcome.kind,
            message.message_id,
        )

    # --- responses ------------------------------------------------------------------------

    def _page(
        self, request: web.Request, template: str, *, status: int = 200, **context: Any
    ) -> web.Response:
        """A page with the CSRF field for the browser's cookie (set if it had none)."""
        cookie = request.cookies.get(CSRF_COOKIE, "")
        fresh = not _COOKIE_VALUE.match(cookie)
        if fresh:
            cookie = new_csrf_cookie()
        depth = request.path.count("/") - 1
        html = self.pages.render(
            template,
            root="../" * depth,
            csrf=csrf_token(cookie, self._secret()),
            **context,
        )
        response = web.Response(
            text=html, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS
        )
        if fresh:
            response.set_cookie(
                CSRF_COOKIE,
                cookie,
                path="/",
                httponly=True,
                samesite="Strict",
                secure=self.config().web.base_url.startswith("https://"),
            )
        return response

    def _message(
        self, request: web.Request, title: str, text: str, *, status: int, link: bool = False
    ) -> web.Response:
        """A page that only says something (an error, a link that no longer works)."""
        return self._page(
            request, "message.html", status=status, title=title, text=text, subscribe_link=link
        )

    def _secret(self) -> str:
        return self.config().web.secret.get_secret_value()

    async def _fields(self, request: web.Request) -> dict[str, str] | None:
        """The posted fields when the CSRF field matches the cookie and the
        Origin (if sent) is this site's; None otherwise."""
        posted = await request.post()
        fields = {k: v for k, v in posted.items() if isinstance(v, str)}
        if not csrf_ok(request.cookies.get(CSRF_COOKIE), fields.get("csrf"), self._secret()):
            return None
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._origins(request):
            return None
        return fields

    def _origins(self, request: web.Request) -> set[str]:
        base = urlsplit(self.config().web.base_url)
        return {f"{base.scheme}://{base.netloc}", f"{request.scheme}://{request.host}"}

    def _refused(self, request: web.Request) -> web.Response:
        return self._message(
            request,
            "This form has expired",
            "The page was open too long, or your browser does not keep cookies for this "
            "site. Reload the page and send the form again.",
            status=403,
        )

    def _client(self, request: web.Request) -> str:
        header = self.config().web.client_ip_header
        if header and (value := request.headers.get(header)):
            return value.rsplit(",", 1)[-1].strip()
        return request.remote or "unknown"

    def _checks(self, form: SubscriptionForm) -> None:
        """Each filled row's query checked and previewed."""
        docs = self.recent.docs()
        for row in form.rows:
            if row.query.strip() and not row.remove:
                row.check = check_query(row.query.strip(), docs)

    # --- sign-up -------------------------------------------------------------------------

    async def subscribe_page(self, request: web.Request) -> web.Response:
        return self._page(
            request,
            "subscribe.html",
            form=SubscriptionForm().with_blank_row(),
            checked=False,
            default_max_papers=self.config().render.max_papers,
        )

    async def subscribe(self, request: web.Request) -> web.Response:
        fields = await self._fields(request)
        if fields is None:
            return self._refused(request)
        form = read_form(fields)
        profile = form.checked()
        if fields.get("action") == "check" or profile is None:
            await asyncio.to_thread(self._checks, form)
            return self._page(
                request,
                "subscribe.html",
                status=200 if profile is not None else 400,
                form=form.with_blank_row(),
                checked=True,
                default_max_papers=self.config().render.max_papers,
            )
        if not self.by_client.allow(self._client(request)) or not self.by_address.allow(
            address_key(profile.email)
        ):
            return self._message(
                request,
                "Too many sign-ups",
                "There were too many sign-ups from here or for this address in the last "
                "hour. Try again later.",
                status=429,
            )
        assert self._jobs is not None
        try:
            self._jobs.put_nowait(profile)
        except asyncio.QueueFull:
            return self._message(
                request, "Busy", "Too many sign-ups at once; try again in a minute.", status=503
            )
        return self._page(request, "sent.html", email=profile.email, hours=CONFIRM_HOURS)

    async def check(self, request: web.Request) -> web.Response:
        """One query's check, as the fragment the page shows under the field."""
        fields = await self._fields(request)
        if fields is None:
            return web.Response(status=403, text="reload the page", headers=_HEADERS)
        if not self.checks.allow(self._client(request)):
            return web.Response(status=429, text="too many checks", headers=_HEADERS)
        query = fields.get("query", "").strip()
        found: Check | None = None
        if query:
            docs = await asyncio.to_thread(self.recent.docs)
            found = await asyncio.to_thread(check_query, query, docs)
        html = self.pages.render("_check.html", check=found)
        headers = {**_HEADERS, "X-Query-Ok": "0" if found and not found.ok else "1"}
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers=headers)

    # --- confirmation ----------------------------------------------------------------------

    def _confirmation(
        self, request: web.Request
    ) -> tuple[int, str, WebSubscriber | None] | web.Response:
        """(id, nonce, the sign-up it would confirm) of a genuine, unexpired
        link; else the page to answer with."""
        found = read_confirm_token(request.match_info["token"], self._secret(), self.clock())
        if found is None:
            return self._not_found(request)
        if found.expired:
            return self._message(
                request,
                "This link has expired",
                f"Confirmation links work for {CONFIRM_HOURS} hours. "
                "Sign up again to get a new one.",
                status=410,
                link=True,
            )
        pending = self.store.web.pending(found.subscriber_id, found.nonce)
        return found.subscriber_id, found.nonce, pending

    def _used(self, request: web.Request) -> web.Response:
        return self._message(
            request,
            "This link was already used",
            "The subscription is confirmed. The link at the end of every digest opens its page.",
            status=410,
        )

    async def confirm_page(self, request: web.Request) -> web.Response:
        found = await asyncio.to_thread(self._confirmation, request)
        if isinstance(found, web.Response):
            return found
        subscriber_id, _, pending = found
        if pending is None:
            return await self._gone(request, subscriber_id)
        return self._page(request, "confirm.html", sub=pending)

    async def confirm(self, request: web.Request) -> web.Response:
        fields = await self._fields(request)
        if fields is None:
            return self._refused(request)
        found = await asyncio.to_thread(self._confirmation, request)
        if isinstance(found, web.Response):
            return found
        subscriber_id, nonce, _ = found
        result = await asyncio.to_thread(self.store.web.confirm, subscriber_id, nonce, self.clock())
        if result != "confirmed":
            return await self._gone(request, subscriber_id)
        sub = await asyncio.to_thread(self.store.web.get, subscriber_id)
        assert sub is not None
        log.info("web sign-up confirmed subscriber=%s", sub.email)
        link = manage_url(self.config().web.base_url, sub.email, self._secret())
        return self._page(request, "confirmed.html", sub=sub, manage=link)

    async def _gone(self, request: web.Request, subscriber_id: int) -> web.Response:
        """A genuine link whose sign-up is confirmed already, or was replaced."""
        sub = await asyncio.to_thread(self.store.web.get, subscriber_id)
        if sub is not None and sub.confirmed:
            return self._used(request)
        return self._not_found(request)

    def _not_found(self, request: web.Request) -> web.Response:
        return self._message(request, "Not found", "This link is not valid.", status=404)

    # --- the reader's own page -------------------------------------------------------------

    def _reader(self, request: web.Request) -> WebSubscriber | None:
        """The subscriber a genuine manage link names, if they may use the page."""
        key = read_manage_token(request.match_info["token"], self._secret())
        if key is None:
            return None
        sub = self.store.web.find(key)
        if sub is None or not sub.active:
            return None
        if sub.web and not sub.confirmed:
            return None
        if not sub.web and address_key(sub.email) not in self._configured():
            return None
        return sub

    def _configured(self) -> set[str]:
        return {address_key(s.email) for s in self.config().subscribers}

    def _manage_view(
        self,
        request: web.Request,
        sub: WebSubscriber,
        *,
        form: SubscriptionForm | None = None,
        notice: Notice | None = None,
        status: int = 200,
        checked: bool = False,
    ) -> web.Response:
        config = self.config()
        if sub.web:
            profile = sub.profile()
            form = (form or form_for(profile)).with_blank_row()
            zone = ZoneInfo(profile.timezone)
            configured = None
        else:
            configured = config.subscriber(sub.email)
            zone = ZoneInfo(configured.timezone)
        today = self.clock().astimezone(zone).date()
        digests = self.store.web.recent_digests(sub.id)
        return self._page(
            request,
            "manage.html",
            status=status,
            sub=sub,
            form=form,
            configured=configured,
            pages=config.web.config_subscriber_pages,
            default_max_papers=config.render.max_papers,
            notice=notice,
            checked=checked,
            paused=sub.paused_until is not None and today < sub.paused_until,
            today=today,
            tomorrow=today + timedelta(days=1),
            last_pause_day=today + timedelta(days=MAX_PAUSE_DAYS),
            digests=[(d.at.astimezone(zone), d.papers, d.message_id) for d in digests],
            zone=zone.key,
        )

    async def manage_page(self, request: web.Request) -> web.Response:
        sub = await asyncio.to_thread(self._reader, request)
        if sub is None:
            return self._not_found(request)
        return await asyncio.to_thread(self._manage_view, request, sub)

    async def manage(self, request: web.Request) -> web.Response:
        fields = await self._fields(request)
        if fields is None:
            return self._refused(request)
        return await asyncio.to_thread(self._manage, request, fields)

    def _manage(self, request: web.Request, fields: Mapping[str, str]) -> web.Response:
        """One action of the page, then the page again with what happened."""
        sub = self._reader(request)
        if sub is None:
            return self._not_found(request)
        action, now = fields.get("action", ""), self.clock()
        if action == "unsubscribe":
            self.store.unsubscribe(sub.email, now)
            log.info("unsubscribed subscriber=%s (own page)", sub.email)
            said = Notice("You are unsubscribed: no more digests will be sent.")
        elif action == "resubscribe":
            self.store.resubscribe(sub.email)
            log.info("resubscribed subscriber=%s (own page)", sub.email)
            said = Notice("You are subscribed again: digests start with the next new papers.")
        elif not sub.web:
            return self._message(
                request,
                "Managed by the operator",
                "These subscriptions are set by the operator of this digest; reply to a "
                "digest to ask for a change.",
                status=403,
            )
        elif action in ("save", "check"):
            form = read_form(fields, email=sub.email)
            profile = form.checked()
            if action == "check" or profile is None:
                self._checks(form)
                status = 400 if profile is None else 200
                problem = Notice("Not saved: see below.", "error") if profile is None else None
                return self._manage_view(
                    request, sub, form=form, notice=problem, status=status, checked=True
                )
            self.store.web.save(sub.id, profile, now)
            log.info("web subscriber saved subscriber=%s", sub.email)
            said = Notice("Saved. Your changes apply from the next pass.")
        elif action == "pause":
            until = _day(fields.get("until", ""))
            today = now.astimezone(ZoneInfo(sub.timezone or "UTC")).date()
            if until is None or not today < until <= today + timedelta(days=MAX_PAUSE_DAYS):
                said = Notice(
                    f"Not paused: pick a day after today, at most {MAX_PAUSE_DAYS} days ahead.",
                    "error",
                )
                return self._manage_view(request, sub, notice=said, status=400)
            self.store.web.pause(sub.id, until, now)
            said = Notice(f"Paused: no digests before {until.isoformat()}.")
        elif action == "resume":
            self.store.web.pause(sub.id, None, now)
            said = Notice("Resumed: digests start again with the next new papers.")
        else:
            return self._message(request, "Unknown action", "Nothing was changed.", status=400)
        fresh = self.store.web.get(sub.id)
        assert fresh is not None
        return self._manage_view(request, fresh, notice=said)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = self.pages.static(name)
        if data is None:
            raise web.HTTPNotFound
        return web.Response(
            body=data,
            content_type=_STATIC_TYPES[name],
            charset="utf-8",
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        return None
