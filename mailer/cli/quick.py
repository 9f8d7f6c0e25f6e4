"""Commands answered before the command line loads: ``mailer subs list``
from a warm configuration cache.

Loading typer (which converts every option with pydantic), pydantic and the
configuration's models takes most of a quick command's time, more than its
work: ``subs list`` with 2,000 subscribers spent about 0.3 of its 0.45 s on
imports. The configuration's cache keeps what the listing shows of a file
that was fully validated (mailer.config_cache.Summary), and the database is
read with its driver alone (mailer.store.listing.read_only), so the listing
needs neither.

This answers only the plain forms of a command, and only when everything it
needs is at hand; for anything else (another option, ``--help``, a cold or
stale cache, MAILER_* variables over the file's keys, a database the driver
alone cannot read) it answers None, before printing anything, and the full
command line takes over and does what it always does. Both print through the
same functions (mailer.subscriber_list, mailer.cli.listing), so the output is the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

# The root options a quick command takes: only --config, in its four spellings.
_CONFIG = "--config"
_CONFIG_SHORT = "-c"


def answer(argv: Sequence[str]) -> str | None:
    """What ``mailer ARGV`` prints, when it is a quick command that can be
    answered here; else None, for the full command line."""
    parsed = _parse(argv)
    if parsed is None:
        return None
    path, command, options = parsed
    run = COMMANDS.get(command)
    return run(path, options) if run else None


def _parse(argv: Sequence[str]) -> tuple[Path | None, tuple[str, ...], tuple[str, ...]] | None:
    """(--config's path, the command's words, its options), or None for
    anything but ``[--config PATH] WORD... [--option...]``."""
    path: Path | None = None
    args = list(argv)
    while args and args[0].startswith("-"):
        arg = args.pop(0)
        if arg in (_CONFIG, _CONFIG_SHORT) and args:
            value = args.pop(0)
        elif arg.startswith(_CONFIG + "="):
            value = arg.removeprefix(_CONFIG + "=")
        elif arg.startswith(_CONFIG_SHORT) and len(arg) > len(_CONFIG_SHORT):
            value = arg.removeprefix(_CONFIG_SHORT)
        else:
            return None
        if not value:
            return None
        path = Path(value)
    words = tuple(a for a in args if not a.startswith("-"))
    options = tuple(args[len(words) :])
    if tuple(args[: len(words)]) != words or any(not o.startswith("--") for o in options):
        return None  # options among the words, or a value after an option
    return path, words, options


def _subs_list(path: Path | None, options: tuple[str, ...]) -> str | None:
    """``mailer subs list [--json]``."""
    if options not in ((), ("--json",)):
        return None
    from mailer.cli.listing import listing
    from mailer.config_cache import (
        cache_file,
        cache_key,
        config_file,
        environment_overrides,
        read_cache,
        resolved_url,
    )
    from mailer.store.listing import Listing, read_only, sqlite_missing
    from mailer.subscriber_list import subscriber_rows

    path = config_file(path)
    if path is None:
        return None  # the embedded example is not cached
    cache = cache_file(path)
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    cached = read_cache(cache, cache_key(raw)) if cache else None
    summary = cached.summary if cached else None
    if summary is None:
        return None
    try:
        if environment_overrides(summary.fields, os.environ):
            return None
        url = resolved_url(summary.database_url, path.resolve().parent)
        stored = Listing() if sqlite_missing(url) else read_only(url)
        if stored is None:
            return None
        rows = subscriber_rows(summary.subscribers, stored.unsubscribed, stored.web)
        text = listing(rows, str(path), as_json=options == ("--json",))
    except (KeyError, TypeError, AttributeError, ValueError):
        return None  # a summary of another shape than this code writes
    # What a full load accepts has no control characters; a planted cache
    # could (the cache folder may be another user's): the full load judges it.
    return text if text.replace("\n", "").isprintable() else None


# A quick command: its words -> what answers it, from --config's path and its options.
COMMANDS: dict[tuple[str, ...], Callable[[Path | None, tuple[str, ...]], str | None]] = {
    ("subs", "list"): _subs_list
}
