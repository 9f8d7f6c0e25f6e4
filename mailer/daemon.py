"""The daemon: APScheduler wakes the pipeline every ``interval_seconds``.

The scheduler only wakes us; what is due, sent or pending lives in the
database, so a run that crashes or is skipped loses nothing. SIGTERM or
Ctrl-C stops the scheduler, lets the pass in flight finish its current step
(every step commits atomically) and returns within seconds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailer.errors import MailerError
from mailer.pipeline import PassReport, Pipeline
from mailer.web import start_web

log = logging.getLogger("mailer")

STOP_GRACE_SECONDS = 8.0


class Daemon:
    def __init__(self, pipeline: Pipeline, interval: float) -> None:
        self.pipeline = pipeline
        self.interval = interval
        self.passes = 0
        self._running: asyncio.Task[PassReport | None] | None = None

    async def tick(self) -> PassReport | None:
        """One pass; any failure is logged and the next pass tries again."""
        self._running = asyncio.current_task()
        try:
            report = await self.pipeline.run_pass()
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
        return report

    async def run(self, stop: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        # The unsubscribe endpoint, when [web] listen is set; it stops with the scheduler.
        web = await start_web(
            self.pipeline.config.web.listen,
            self.pipeline.store,
            secret=lambda: self.pipeline.config.web.secret.get_secret_value(),
            clock=self.pipeline.clock,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        scheduler = AsyncIOScheduler(event_loop=loop, timezone="UTC")
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval,
            next_run_time=datetime.now().astimezone(),
            id="pass",
            max_instances=1,
            coalesce=True,
            # A pass that starts late is still wanted; there is never more than one.
            misfire_grace_time=None,
        )
        scheduler.start()
        log.info(
            "watching %s every %gs; press Ctrl-C to stop",
            self.pipeline.config.watch.dir,
            self.interval,
        )
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            self.pipeline.stopping = True
            scheduler.shutdown(wait=False)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            running = self._running
            if running is not None and not running.done():
                try:
                    await asyncio.wait_for(asyncio.shield(running), STOP_GRACE_SECONDS)
                except TimeoutError:
                    running.cancel()
                    log.warning("a pass was still running; it resumes on the next start")
            if web is not None:
                await web.stop()
        log.info("stopped")
