"""Editing config.toml in place, the way an operator would by hand.

tomlkit keeps the operator's comments, key order and layout. Each edit is a
pure function, TOML text in, TOML text out; ``apply_edit`` validates the whole
result with ``parse_config`` before it replaces the file atomically (a
temporary file renamed over it), so a failed edit leaves the file exactly as
it was, byte for byte. Edits hold an exclusive lock on ``<config>.lock`` from
read to rename, so concurrent edits queue up instead of one overwriting the
other.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Table
from tomlkit.toml_document import TOMLDocument

from mailer.addresses import address_key
from mailer.config import Config, parse_config
from mailer.errors import ConfigError

SETTABLE_KEYS = ("email", "name", "schedule", "timezone", "max_papers", "resubscribed")


def _parse(text: str, source: str) -> TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(
            f"{source}: not valid TOML: {exc}", hint="fix the syntax at that line and column"
        ) from exc


def _subscribers(doc: TOMLDocument, source: str) -> AoT:
    if "subscribers" not in doc:
        doc.append("subscribers", tomlkit.aot())
    found = doc["subscribers"]
    if not isinstance(found, AoT):
        raise ConfigError(
            f"{source}: 'subscribers' is not written as [[subscribers]] tables",
            hint="rewrite it as [[subscribers]] tables so it can be edited",
        )
    return found


def _find(doc: TOMLDocument, email: str, source: str) -> Table:
    for table in _subscribers(doc, source):
        if isinstance(table, Table) and address_key(str(table.get("email", ""))) == address_key(
            email
        ):
            return table
    raise ConfigError(
        f"{source}: no subscriber {email!r}", hint="'mailer subs list' shows who is configured"
    )


def _separate(table: Table) -> None:
    """A blank line after ``table``, so what follows starts a new paragraph."""
    if not table.as_string().endswith("\n\n"):
        table.add(tomlkit.nl())


def _subscription(name: str, query: str, similar: Similar | None = None) -> Table:
    table = tomlkit.table()
    table["name"] = name
    if query or similar is None:
        literal = "'" not in query and "\n" not in query
        table["query"] = tomlkit.string(query, literal=literal)
    if similar is not None:
        similar.write(table)
    table.add(tomlkit.nl())
    return table


def add_subscriber(
    text: str,
    email: str,
    *,
    name: str = "",
    schedule: str | None = None,
    timezone: str | None = None,
    queries: Sequence[tuple[str, str]] = (),
    source: str = "config",
) -> str:
    doc = _parse(text, source)
    subscribers = _subscribers(doc, source)
    if any(address_key(str(t.get("email", ""))) == address_key(email) for t in subscribers):
        raise ConfigError(
            f"{source}: subscriber {email!r} already exists",
            hint="use 'mailer subs set' or 'mailer subs add-query' to change it",
        )
    table = tomlkit.table()
    table["email"] = email
    if name:
        table["name"] = name
    if schedule is not None:
        table["schedule"] = schedule
    if timezone is not None:
        table["timezone"] = timezone
    table.add(tomlkit.nl())
    if queries:
        aot = tomlkit.aot()
        for query_name, query in queries:
            aot.append(_subscription(query_name, query))
        table["subscriptions"] = aot
    if len(subscribers):
        last = subscribers[-1]
        inner = last.get("subscriptions")
        _separate(inner[-1] if isinstance(inner, AoT) and len(inner) else last)
    subscribers.append(table)
    return tomlkit.dumps(doc)


def remove_subscriber(text: str, email: str, *, source: str = "config") -> str:
    doc = _parse(text, source)
    table = _find(doc, email, source)
    subscribers = _subscribers(doc, source)
    index = next(i for i, t in enumerate(subscribers) if t is table)
    del subscribers[index]
    return tomlkit.dumps(doc)


def set_subscriber_key(
    text: str, email: str, key: str, value: str, *, source: str = "config"
) -> str:
    if key not in SETTABLE_KEYS:
        raise ConfigError(
            f"cannot set {key!r} on a subscriber",
            hint=f"settable keys: {', '.join(SETTABLE_KEYS)}; queries: 'mailer subs add-query'",
        )
    doc = _parse(text, source)
    table = _find(doc, email, source)
    if key == "email" and address_key(value) != address_key(email):
        others = _subscribers(doc, source)
        if any(address_key(str(t.get("email", ""))) == address_key(value) for t in others):
            raise ConfigError(f"{source}: subscriber {value!r} already exists")
    table[key] = _typed(key, value)  # tomlkit puts a new key before the subscriptions
    return tomlkit.dumps(doc)


def _typed(key: str, value: str) -> str | int | date | datetime:
    """The TOML type a hand edit would use: a number for max_papers, a date or
    date-time for resubscribed; anything else stays a string for validation
    to name."""
    if key == "max_papers" and value.strip().isdigit():
        return int(value)
    if key == "resubscribed":
        for kind in (date, datetime):
            try:
                return kind.fromisoformat(value.strip())
            except ValueError:
                continue
    return value


@dataclass(frozen=True)
class Similar:
    """The keys of a 'more like these' subscription (see SubscriptionConfig)."""

    like: Sequence[str] = ()
    like_text: str = ""
    top: int | None = None
    threshold: float | None = None

    def write(self, table: Table) -> None:
        """Set these keys on a subscription's table; unset ones are removed."""
        values: dict[str, object] = {
            "like": list(self.like) or None,
            "like_text": self.like_text or None,
            "top": self.top,
            "threshold": self.threshold,
        }
        for key, value in values.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value


def add_query(
    text: str,
    email: str,
    name: str,
    query: str,
    *,
    replace: bool = False,
    source: str = "config",
    similar: Similar | None = None,
) -> str:
    """Add a subscription (or replace one's query); with ``similar``, a
    'more like these' subscription, ``query`` then optional."""
    doc = _parse(text, source)
    table = _find(doc, email, source)
    subs = table.get("subscriptions")
    if subs is None:
        _separate(table)
        subs = tomlkit.aot()
        table["subscriptions"] = subs
    if not isinstance(subs, AoT):
        raise ConfigError(
            f"{source}: {email}'s subscriptions are not [[subscribers.subscriptions]]"
        )
    for existing in subs:
        if str(existing.get("name", "")) == name:
            if not replace:
                raise ConfigError(
                    f"{source}: {email} already has a subscription named {name!r}",
                    hint="pass --replace to change its query, or choose another name",
                )
            if query or similar is None:
                existing["query"] = tomlkit.string(query, literal="'" not in query)
            else:
                existing.pop("query", None)
            if similar is not None:
                similar.write(existing)
            return tomlkit.dumps(doc)
    if len(subs):
        _separate(subs[-1])
    subs.append(_subscription(name, query, similar))
    return tomlkit.dumps(doc)


def remove_query(text: str, email: str, name: str, *, source: str = "config") -> str:
    doc = _parse(text, source)
    table = _find(doc, email, source)
    subs = table.get("subscriptions")
    names = [str(s.get("name", "")) for s in subs] if isinstance(subs, AoT) else []
    if name not in names:
        raise ConfigError(
            f"{source}: {email} has no subscription named {name!r}",
            hint=f"their subscriptions: {', '.join(names) or 'none'}",
        )
    assert isinstance(subs, AoT)
    del subs[names.index(name)]
    if not len(subs):
        del table["subscriptions"]
    return tomlkit.dumps(doc)


# --- the edge: read, validate, replace ------------------------------------------


LOCK_WAIT_SECONDS = 30.0


@contextmanager
def edit_lock(target: Path, *, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` for one read-validate-write edit.

    The lock lives on a file next to ``target`` (``config.toml.lock``), not on
    the config itself: the edit replaces the config by rename, so a lock on it
    would guard an inode that is no longer the config. The holder deletes the
    lock file when done; a waiter that then wins the lock on the deleted file
    notices (the path no longer names its inode) and locks afresh."""
    lock_path = target.with_name(target.name + ".lock")
    deadline = time.monotonic() + wait
    while True:
        fd = _open_lock(lock_path, target)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConfigError(
                            f"{target}: another edit has held {lock_path.name} for {wait:g}s; "
                            "nothing was written",
                            hint="wait for the other 'mailer subs' command, then run this again",
                        ) from None
                    time.sleep(0.01)
            if _names(lock_path, fd):
                try:
                    yield
                finally:
                    lock_path.unlink(missing_ok=True)
                return
        finally:
            os.close(fd)  # closing releases the lock


def _open_lock(lock_path: Path, target: Path) -> int:
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"{lock_path}: cannot create the edit lock: {exc.strerror}",
            hint=f"the folder {target.parent} must be writable to edit the configuration",
        ) from exc


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not deleted by the
    previous holder)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def apply_edit(path: Path, edit: Callable[[str], str]) -> Config:
    """Edit the file at ``path``; it changes only if the whole result is valid.
    Read, validation and write happen under ``edit_lock``: an edit that reports
    success is in the file."""
    target = path.resolve()
    with edit_lock(target):
        return _apply_locked(path, target, edit)


def _apply_locked(path: Path, target: Path, edit: Callable[[str], str]) -> Config:
    try:
        before = target.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the configuration: {exc.strerror}",
            hint="pass --config PATH; copy config.example.toml to start one",
        ) from exc
    try:
        text = before.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text", hint="save it as UTF-8") from exc
    edited = edit(text)
    try:
        config = parse_config(edited, source=str(path), base_dir=target.parent, file=target)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message}\n{path} was not changed", hint=exc.hint) from exc
    write_atomic(target, edited.encode("utf-8"), expected=before)
    return config


def write_atomic(path: Path, data: bytes, *, expected: bytes | None = None) -> None:
    """Replace ``path`` by renaming a complete temporary file over it, so a reader
    (the daemon) sees the old file or the new one, never half of one. With
    ``expected``, refuse if someone else changed the file meanwhile."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(mode)
        if expected is not None and path.read_bytes() != expected:
            raise ConfigError(
                f"{path} was changed by someone else during this edit; nothing was written",
                hint="run the command again",
            )
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
