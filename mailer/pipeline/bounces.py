"""Bounces and replies -> suppressions and unsubscribes: the bounce mailbox
(mailer.bounces), read at the start of every pass, before sending.

Each message not yet seen is classified (``classify``): a bounce is matched
to the message it reports on, by the VERP address it came back to
(mailer.verp) or else by the original's Message-ID in the copy it carries,
and recorded on that message (``bounced``) and against its recipient, who
is suppressed when the bounces reach ``[bounces]`` hard_limit, or soft_limit
within soft_window_days (mailer.store.suppressions); a reply whose subject or
first line is "unsubscribe" unsubscribes its sender, if a subscriber. What
was acted on is marked seen; what cannot be understood is flagged and left
for a person, and logged. Nothing here stops a pass: an unreachable mailbox
is logged, and sending goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from mailer.addresses import address_key
from mailer.bounces.classify import (
    AutoReply,
    Bounce,
    Classified,
    Failure,
    NotUnderstood,
    UnsubscribeReply,
    classify,
)
from mailer.bounces.mailbox import Letter, open_mailbox
from mailer.config import Config
from mailer.errors import MailboxError
from mailer.pipeline.report import Clock, PassReport, Stopping
from mailer.store import BounceLimits, DeliveryRow, Store
from mailer.verp import parse_bounce_address

log = logging.getLogger("mailer")

MAX_PER_PASS = 1000  # messages read per pass; the rest wait for the next


@dataclass
class MailboxReport:
    """What one reading of the bounce mailbox did, for the log."""

    read: int = 0
    bounces: int = 0
    suppressed: int = 0
    unsubscribed: int = 0
    kept: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"read={self.read} bounces={self.bounces} suppressed={self.suppressed} "
            f"unsubscribed={self.unsubscribed} kept={self.kept}"
        )


def bounce_limits(config: Config) -> BounceLimits:
    b = config.bounces
    return BounceLimits(b.hard_limit, b.soft_limit, timedelta(days=b.soft_window_days))


@dataclass(frozen=True)
class ReadBounces:
    """The bounce-mailbox stage of a pass."""

    store: Store
    config: Config
    clock: Clock

    def run(self, report: PassReport, stopping: Stopping) -> MailboxReport:
        done = MailboxReport()
        box = open_mailbox(self.config.bounces)
        if box is None:
            return done
        try:
            with box:
                for letter in box.unread(MAX_PER_PASS):
                    if stopping():
                        break
                    done.read += 1
                    if self.act(letter, done):
                        box.done(letter.key)
                    else:
                        done.kept += 1
                        box.keep(letter.key)
        except MailboxError as exc:
            done.errors.append(str(exc))
            report.errors.append(str(exc))
            log.error("bounce mailbox not read: %s", exc)
        if done.read:
            log.info("bounce mailbox %s %s", box.where, done.summary())
        return done

    def act(self, letter: Letter, done: MailboxReport) -> bool:
        """Act on one message; False when it is to be left for a person."""
        if letter.data is None:
            log.warning("bounce mailbox: kept %s for a person: larger than a bounce", letter.name)
            return False
        try:
            found: Classified = classify(letter.data)
        except Exception as exc:  # a detector tripping on odd input must not stop the pass
            found = NotUnderstood(f"cannot be parsed: {exc.__class__.__name__}: {exc}")
        match found:
            case Bounce():
                return self.bounced(found, letter, done)
            case UnsubscribeReply(sender):
                return self.unsubscribe(sender, letter, done)
            case AutoReply(why):
                log.info("bounce mailbox: automatic reply %s ignored (%s)", letter.name, why)
                return True
            case NotUnderstood(why):
                log.warning("bounce mailbox: kept %s for a person: %s", letter.name, why)
                return False

    def bounced(self, bounce: Bounce, letter: Letter, done: MailboxReport) -> bool:
        if not bounce.failures:
            log.info(
                "bounce mailbox: delay warning %s ignored: the server is still trying", letter.name
            )
            return True
        row = self.delivery_of(bounce)
        if row is None or row.id is None:
            log.warning(
                "bounce mailbox: kept %s for a person: a bounce for %s that names no message "
                "of ours (no VERP address of [smtp] return_path, no known Message-ID)",
                letter.name,
                ", ".join(f.recipient for f in bounce.failures),
            )
            return False
        failure = _failure_for(row.recipient, bounce.failures)
        recorded = self.store.record_bounce(
            row.id,
            hard=failure.hard,
            status=failure.status,
            reason=failure.diagnostic,
            now=self.clock(),
            limits=bounce_limits(self.config),
        )
        if recorded is None:
            return False
        done.bounces += 1
        log.warning(
            "bounced subscriber=%s message_id=%s kind=%s status=%s reply=%s",
            recorded.recipient,
            recorded.message_id,
            "hard" if failure.hard else "soft",
            failure.status,
            failure.diagnostic,
        )
        if recorded.suppressed is not None:
            done.suppressed += 1
            log.warning(
                "suppressed subscriber=%s: no more mail until 'mailer suppressions remove'; "
                "reason=%s",
                recorded.recipient,
                recorded.suppressed.reason,
            )
        return True

    def delivery_of(self, bounce: Bounce) -> DeliveryRow | None:
        """The message a bounce is about: by its VERP address, else by the
        Message-ID of the copy it carries."""
        return_path = self.config.smtp.return_path
        for address in bounce.addressed_to if return_path else ():
            token = parse_bounce_address(address, return_path)
            if token is None:
                continue
            row = self.store.delivery(token.delivery_id)
            if row is not None and token.names(row.message_id):
                return row
        for message_id in bounce.message_ids:
            row = self.store.delivery_by_message_id(message_id)
            if row is not None:
                return row
        return None

    def unsubscribe(self, sender: str, letter: Letter, done: MailboxReport) -> bool:
        if not self.store.unsubscribe(sender, self.clock()):
            log.warning(
                "bounce mailbox: kept %s for a person: an unsubscribe request from %s, "
                "who is not a subscriber",
                letter.name,
                sender,
            )
            return False
        done.unsubscribed += 1
        log.info("unsubscribed subscriber=%s by a reply (%s)", sender, letter.name)
        return True


def _failure_for(recipient: str, failures: Sequence[Failure]) -> Failure:
    """The failure of ``recipient`` among those reported, else the first (a
    forwarded address fails under another name)."""
    key = address_key(recipient)
    for failure in failures:
        if address_key(failure.recipient) == key:
            return failure
    return failures[0]
