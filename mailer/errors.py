"""Every failure mailer reports on purpose is a MailerError.

Each subclass is one kind of failure; each message names the file, line,
config key or host involved and carries a hint saying what to do, so the CLI
can print it and exit without a traceback.
"""

from __future__ import annotations


class MailerError(Exception):
    """Base of mailer's own errors; the CLI catches only this."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(MailerError):
    """The configuration file or environment is invalid."""

    exit_code = 2


class DumpError(MailerError):
    """A file is not a Daily Papers dump, or cannot be read."""


class QueryError(ConfigError):
    """A subscription query cannot be parsed."""

    def __init__(
        self, message: str, *, query: str, position: int | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.query = query
        self.position = position


class StoreError(MailerError):
    """The database cannot be opened, created or written."""


class DatabaseReplacedError(StoreError):
    """The SQLite file was deleted or replaced under a running mailer: it
    stops rather than write on to a file no one else can open."""


class TemplateError(MailerError):
    """A digest template is missing or broken: the operator's to fix, like
    the configuration that names it."""

    exit_code = 2


class DeliveryError(MailerError):
    """A message could not be handed to the mail transport."""

    def __init__(self, message: str, *, permanent: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.permanent = permanent


class AlreadyRunningError(MailerError):
    """Another daemon holds the lock on this database."""


class LockLostError(MailerError):
    """This daemon no longer holds its database's lock: it must not send."""


class WebError(MailerError):
    """The unsubscribe endpoint cannot listen where [web] listen says."""


class MessageError(MailerError):
    """One message cannot be built for its recipient: that message fails, no other."""


class MailboxError(MailerError):
    """The bounce mailbox ([bounces] maildir or imap_url) cannot be opened or
    read: this pass reads no bounces, and sends as usual."""
