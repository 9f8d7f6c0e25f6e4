"""Which configuration file a command reads, and the cache of its validated loads.

A file whose very bytes were fully validated before, by the same code, is
read back from a cache of that load: its TOML data and the addresses it
validated, for mailer.config to rebuild the models without parsing any TOML,
address or query again, and a summary of what quick commands show (the
database URL and the configured subscribers as ``mailer subs list`` lists
them, mailer.subscriber_list), so those answer without loading the models at all
(mailer.cli.quick). This module imports no pydantic, so that path stays quick.
"""

from __future__ import annotations

import datetime as datetime_module
import hashlib
import importlib.util
import io
import os
import pickle
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailer import __version__
from mailer.addresses import remember_addresses
from mailer.collector import gc_paused

DEFAULT_CONFIG = Path("config.toml")
ENV_PREFIX = "MAILER_"  # MAILER_SMTP__PASSWORD overrides [smtp] password

# What a cache file holds: a line naming this format and the key, then the
# pickled Cached (plain data only, see _CacheReader).
_FORMAT = 2
# The code that judged the bytes or made the summary: a changed checkout
# must not trust an old verdict. Found, not imported: a load from the cache
# imports no query parser.
_JUDGES = (
    "mailer.config",
    "mailer.config_cache",
    "mailer.addresses",
    "mailer.query",
    "mailer.analysis",
    "mailer.subscriber_list",
    "email_validator",
    "luqum",
    "pydantic",
    "pydantic_core",
)


@dataclass(frozen=True, slots=True)
class Summary:
    """What quick commands read of a validated configuration."""

    # Config's top-level keys, which MAILER_<KEY> variables may override.
    fields: tuple[str, ...]
    # As in the file, before a relative SQLite path is resolved (resolved_url).
    database_url: str
    # mailer.subscriber_list.config_rows of the validated configuration.
    subscribers: list[dict[str, object]]


@dataclass(frozen=True, slots=True)
class Cached:
    """A cache file's contents: the file's TOML data, the (as written,
    normalised) address pairs its validation found, and the summary."""

    data: dict[str, Any]
    addresses: list[tuple[str, str]]
    # None when the load that wrote it had MAILER_ variables over the file's keys.
    summary: Summary | None


def config_file(path: Path | None) -> Path | None:
    """The file a command reads: ``path``, else $MAILER_CONFIG, else
    config.toml when it exists; None for the embedded example."""
    if path is None:
        env = os.environ.get("MAILER_CONFIG")
        path = Path(env) if env else None
    if path is None and not DEFAULT_CONFIG.exists():
        return None
    return path or DEFAULT_CONFIG


def cache_file(path: Path) -> Path | None:
    """Where a configuration file's cache lives: $MAILER_CACHE_DIR (empty: no
    cache), else systemd's cache or state directory, else the user's cache
    folder; one file per configuration path. None: no cache for it (nor
    while subscribers come from the environment: their queries are not the
    file's)."""
    env = os.environ
    if any(k.upper().startswith("MAILER_SUBSCRIBERS") for k in env):
        return None
    try:
        if "MAILER_CACHE_DIR" in env:
            if not env["MAILER_CACHE_DIR"]:
                return None
            folder = Path(env["MAILER_CACHE_DIR"])
        elif env.get("CACHE_DIRECTORY"):
            folder = Path(env["CACHE_DIRECTORY"].split(":")[0])
        elif env.get("STATE_DIRECTORY"):
            folder = Path(env["STATE_DIRECTORY"].split(":")[0]) / "cache"
        elif env.get("XDG_CACHE_HOME"):
            folder = Path(env["XDG_CACHE_HOME"]) / "mailer"
        else:
            folder = Path.home() / ".cache" / "mailer"
        where = str(path.resolve()).encode("utf-8", "surrogateescape")
    except (OSError, RuntimeError):  # no home folder, or an unresolvable path
        return None
    return folder / f"config-{hashlib.sha256(where).hexdigest()[:32]}.pickle"


def cache_key(raw: bytes) -> str:
    """The file's bytes and everything that judged them: the Python and
    mailer versions and the code of _JUDGES (by file, size and time)."""
    stamps = [sys.version, __version__]
    for name in _JUDGES:
        spec = importlib.util.find_spec(name)
        stamps.append(_stamp(spec.origin if spec else None))
    digest = hashlib.sha256(raw)
    digest.update("\0".join(stamps).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _head(key: str) -> bytes:
    return f"mailer config cache {_FORMAT} {key}".encode("ascii")


def _stamp(file: str | None) -> str:
    if not file:
        return "-"
    try:
        st = Path(file).stat()
    except OSError:
        return "-"
    return f"{file}:{st.st_mtime_ns}:{st.st_size}"


class _CacheReader(pickle.Unpickler):
    """Unpickles plain data, dates and this module's records only: a planted
    cache file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "datetime" and name in ("datetime", "date", "time", "timedelta", "timezone"):
            return getattr(datetime_module, name)
        if module == __name__ and name in ("Cached", "Summary"):
            return globals()[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a configuration cache")


def read_cache(cache: Path, key: str) -> Cached | None:
    """The cache's contents when it was written for exactly these bytes
    (``key``), else None: missing, stale, unreadable, torn or foreign. Its
    addresses are remembered as valid (mailer.addresses), so neither the
    models nor the listing validate one again."""
    with gc_paused():  # many objects, no cycles
        try:
            head, _, body = cache.read_bytes().partition(b"\n")
            if head != _head(key):
                return None
            found = _CacheReader(io.BytesIO(body)).load()
        except Exception:
            return None
    if not isinstance(found, Cached):
        return None
    remember_addresses(found.addresses)
    return found


def write_cache(cache: Path, key: str, contents: Cached) -> None:
    """Write the cache atomically (a reader sees the old file or the new
    one); a cache that cannot be written is no error."""
    import tempfile  # not for a read

    try:
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=cache.parent, prefix=".config-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_head(key) + b"\n")
                pickle.dump(contents, f, protocol=5)
            Path(temp).replace(cache)
        except BaseException:
            Path(temp).unlink()
            raise
    except (OSError, pickle.PicklingError):
        return


def environment_overrides(fields: Collection[str], environ: Mapping[str, str]) -> bool:
    """Whether a MAILER_<KEY> or MAILER_<KEY>__... variable names one of the
    top-level ``fields``, however it is cased, as pydantic-settings matches them."""
    for name in environ:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and (
            upper[len(ENV_PREFIX) :].split("__", 1)[0].lower() in fields
        ):
            return True
    return False


def resolved_url(url: str, base: Path) -> str:
    """A database URL with a relative SQLite path made relative to ``base``
    (the configuration file's folder), as every other path in the file."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        path = Path(url.removeprefix(prefix))
        return prefix + str(path if path.is_absolute() else base / path)
    return url
