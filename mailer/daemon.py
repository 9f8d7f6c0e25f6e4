"""The daemon: a pass whenever something wakes it, one at a time.

APScheduler wakes it every ``interval_seconds`` (the rescan); a new file in
the watch folder (mailer.watch), taking over leadership or, for a follower,
messages waiting to be sent (mailer.cluster's heartbeat) wake it at once. A
wake during a pass runs one more pass right after it, however many came.
What is due, sent or pending lives in the database, so a run that crashes
or is skipped loses nothing. SIGTERM or
Ctrl-C stops the scheduler, lets the pass in flight finish its current step
(every step commits atomically; the messages on the wire get their reply and
are recorded) and returns within seconds. SIGHUP reloads the configuration.
A daemon that finds another holding the database's lock (see mailer.lock)
stops and exits with an error. A database file
deleted or replaced under it stops it the same way, then ``run`` raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from contextlib import suppress
from datetime import datetime
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailer.config import Config, parse_config
from mailer.editing import write_atomic
from mailer.errors import AlreadyRunningError, DatabaseReplacedError, MailerError
from mailer.pipeline import PassReport, Pipeline
from mailer.render import Renderer
from mailer.selfservice.app import SelfService
from mailer.watch import watch_folder
from mailer.web import start_web

log = logging.getLogger("mailer")

STOP_GRACE_SECONDS = 7.0
CANCEL_GRACE_SECONDS = 2.0


class Daemon:
    def __init__(
        self, pipeline: Pipeline, interval: float, *, config_path: Path | None = None
    ) -> None:
        self.pipeline = pipeline
        self.interval = interval
        self.passes = 0
        self._running: asyncio.Task[PassReport | None] | None = None
        self.config_path = config_path
        self._config_text = self._read_config()
        self._reload_lock = threading.Lock()
        self._hangup = False  # SIGHUP received: reload at the next pass even if unchanged
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        # Set to end the watcher of the folder watched now (a reload changed it, or a stop).
        self._rewatch = asyncio.Event()
        self._watched: Path | None = None
        self._watch_failed = False
        # What stopped the daemon from inside (another mailer took the lock, the
        # database file was deleted or replaced); ``run`` raises it once stopped.
        self.fatal: MailerError | None = None

    async def tick(self) -> PassReport | None:
        """One pass in a task of its own: stopping cancels the loop of passes
        that waits for it, never the pass, which the stop path lets finish."""
        self._running = asyncio.ensure_future(self._tick())
        try:
            return await asyncio.shield(self._running)
        except asyncio.CancelledError:
            return None  # stopping; run()'s stop path sees the pass through

    async def _tick(self) -> PassReport | None:
        try:
            return await self._pass()
        finally:
            # A SIGHUP that came during the pass is applied now, not a whole interval later.
            if self._hangup and not self.pipeline.stopping:
                await asyncio.to_thread(self.reload_if_changed)
            self._check_watch()

    def wake(self) -> None:
        """Run a pass now, or right after the one in flight: a dump that
        arrived, or a confirmation mail the web pages queued, goes out in
        seconds, not an interval later."""
        if self._wake is not None:
            self._wake.set()

    async def _passes(self, stop: asyncio.Event) -> None:
        """Run a pass for each wake, one at a time, until ``stop``."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            if stop.is_set():
                return
            self._wake.clear()
            await self.tick()

    async def _interval(self) -> None:
        """The scheduler's job: the rescan every interval_seconds."""
        self.wake()

    # --- file events ------------------------------------------------------------------

    async def _watch(self, stop: asyncio.Event) -> None:
        """Watch the folder for file events, again whenever a reload changes
        which folder or turns them on, until ``stop``."""
        while not stop.is_set():
            self._rewatch = asyncio.Event()
            watch = self.pipeline.config.watch
            self._watched = watch.dir if watch.events else None
            self._watch_failed = False
            if watch.events:
                await watch_folder(watch.dir, self._arrived, self._rewatch)
                self._watch_failed = not self._rewatch.is_set()
            await self._rewatch.wait()

    def _arrived(self, renamed: set[Path]) -> None:
        """A batch of file events in the watch folder: a pass, if this node ingests."""
        self.pipeline.scanner.arrived(renamed)
        if self.pipeline.node.leading:
            self.wake()

    def _check_watch(self) -> None:
        """Watch again when the configuration changed the folder or whether
        to watch it, or when a folder that could not be watched now exists."""
        watch = self.pipeline.config.watch
        wanted = watch.dir if watch.events else None
        if wanted != self._watched or (self._watch_failed and watch.dir.is_dir()):
            self._rewatch.set()

    async def _pass(self) -> PassReport | None:
        """One pass; any failure is logged and the next pass tries again."""
        try:
            await asyncio.to_thread(self.reload_if_changed)
            report = await self.pipeline.run_pass()
        except (AlreadyRunningError, DatabaseReplacedError) as exc:
            log.error("stopping: %s", exc.message)
            self.fatal = exc
            if self._stop is not None:
                self._stop.set()
            return None
        except MailerError as exc:
            log.error("pass failed: %s", exc)
            return None
        except Exception:
            log.exception("pass failed unexpectedly; the next pass will try again")
            return None
        finally:
            self.passes += 1
        if report.dumps or report.refused or report.digests or report.sent or report.deferred:
            log.info("pass done %s", report.summary())
        await asyncio.to_thread(self.beat)
        return report

    async def run(self, stop: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        stop = self._stop = stop or asyncio.Event()
        self._wake = asyncio.Event()
        # Subscribers known before the first pass, so their links work at once.
        await asyncio.to_thread(self.pipeline.sync)
        # The unsubscribe endpoint, when [web] listen is set, and the readers'
        # pages when [web] self_service is also on; it stops with the scheduler.
        pages = SelfService(
            self.pipeline.store,
            config=lambda: self.pipeline.config,
            clock=self.pipeline.clock,
            dkim=lambda: self.pipeline.dkim,
            wake=self.wake,
        )
        web = await start_web(
            self.pipeline.config.web.listen,
            self.pipeline.store,
            secret=lambda: self.pipeline.config.web.secret.get_secret_value(),
            clock=self.pipeline.clock,
            self_service=pages,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        scheduler = AsyncIOScheduler(event_loop=loop, timezone="UTC")
        scheduler.add_job(
            self._interval,
            "interval",
            seconds=self.interval,
            next_run_time=datetime.now().astimezone(),
            id="pass",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        scheduler.start()
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        node = self.pipeline.node

        def wake_from_heartbeat() -> None:
            with suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self.wake)

        node.on_wake = wake_from_heartbeat
        passes = asyncio.ensure_future(self._passes(stop))
        watcher = asyncio.ensure_future(self._watch(stop))
        events = " on file events and" if self.pipeline.config.watch.events else ""
        log.info(
            "watching %s%s every %gs as node=%s; press Ctrl-C to stop",
            self.pipeline.config.watch.dir,
            events,
            self.interval,
            node.id,
        )
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            self.pipeline.stopping = True
            node.on_wake = None
            scheduler.shutdown(wait=False)
            self._rewatch.set()
            self.wake()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            running = self._running
            if running is not None and not running.done():
                try:
                    await asyncio.wait_for(asyncio.shield(running), STOP_GRACE_SECONDS)
                except TimeoutError:
                    running.cancel()
                    # Its cleanup records what the server accepted before the cut.
                    await asyncio.wait({running}, timeout=CANCEL_GRACE_SECONDS)
                    log.warning("a pass was still running; it resumes on the next start")
            passes.cancel()
            await asyncio.wait({passes, watcher}, timeout=CANCEL_GRACE_SECONDS)
            if web is not None:
                await web.stop()
        log.info("stopped")
        if self.fatal is not None:
            raise self.fatal

    def hangup(self) -> None:
        """SIGHUP: reload the configuration file at once when idle, else as soon
        as the pass in flight ends (a pass never changes configuration midway)."""
        if self.config_path is None:
            log.warning("SIGHUP: no configuration file to reload")
            return
        log.info("SIGHUP: reloading config=%s", self.config_path)
        self._hangup = True
        if self._running is None or self._running.done():
            self.wake()

    # --- configuration reload -----------------------------------------------------

    def _read_config(self) -> bytes | None:
        if self.config_path is None:
            return None
        try:
            return self.config_path.read_bytes()
        except OSError as exc:
            log.error("config=%s cannot be read: %s", self.config_path, exc.strerror)
            return None

    def reload_if_changed(self) -> bool:
        """Adopt an edited config file (or, after SIGHUP, the file as it is); an
        invalid one is reported once and the daemon keeps running on the last
        good configuration."""
        with self._reload_lock:
            forced, self._hangup = self._hangup, False
            data = self._read_config()
            if data is None or (data == self._config_text and not forced):
                return False
            self._config_text = data
            return self._reload(data)

    def _reload(self, data: bytes) -> bool:
        assert self.config_path is not None
        path = self.config_path
        try:
            config = parse_config(
                data.decode("utf-8", errors="replace"),
                source=str(path),
                base_dir=path.resolve().parent,
                file=path,
            )
            Renderer(config.render.templates, paper_url=config.render.paper_url)
        except MailerError as exc:
            log.error(
                "config=%s not reloaded, still running on the last good configuration: %s",
                path,
                exc.message.replace("\n", ";"),
            )
            return False
        old = self.pipeline.config
        try:
            self.pipeline.configure(config)
        except MailerError as exc:
            self._config_text = None  # try again next pass
            log.error("config=%s not fully applied, will retry: %s", path, exc.message)
            return False
        for what in _restart_needed(old, config):
            log.warning("config=%s %s changed; that takes effect on restart", path, what)
        subscriptions = sum(len(s.subscriptions) for s in config.subscribers)
        log.info(
            "config=%s reloaded subscribers=%d subscriptions=%d",
            path,
            len(config.subscribers),
            subscriptions,
        )
        return True

    # --- heartbeat ------------------------------------------------------------------

    def beat(self) -> None:
        """Rewrite the heartbeat file after a completed pass: its age tells a
        supervisor whether the daemon still makes progress."""
        path = self.pipeline.config.daemon.heartbeat
        now = self.pipeline.clock()
        body = {"pid": os.getpid(), "last_pass": now.isoformat(), "passes": self.passes}
        try:
            write_atomic(path, (json.dumps(body) + "\n").encode())
        except OSError as exc:
            log.warning("heartbeat=%s cannot be written: %s", path, exc.strerror)


def _restart_needed(old: Config, new: Config) -> list[str]:
    changed = []
    if old.database.url != new.database.url:
        changed.append("[database] url")
    if old.watch.interval_seconds != new.watch.interval_seconds:
        changed.append("[watch] interval_seconds")
    return changed
