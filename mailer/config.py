"""The configuration: a TOML file, overridden by MAILER_* environment variables.

Everything is validated when loaded (including every subscription query), so
a bad value is reported once, at start, naming its key, never at send time.
A file whose very bytes were validated before, by the same code, is read
back from a cache of that load (mailer.config_cache): a start with thousands of
subscribers then parses no TOML, address or query again. ``check-config``
always validates the file itself.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from contextvars import ContextVar
from datetime import UTC, date, datetime
from email.utils import parseaddr
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mailer.addresses import (
    address_key,
    normalise_address,
    remembered_addresses,
)
from mailer.collector import gc_paused
from mailer.config_cache import (
    Cached,
    Summary,
    cache_file,
    cache_key,
    config_file,
    environment_overrides,
    read_cache,
    resolved_url,
    write_cache,
)
from mailer.dumpfiles import DEFAULT_MAX_DUMP_BYTES, DEFAULT_MAX_LINE_BYTES
from mailer.errors import ConfigError, QueryError

DEFAULT_PAPER_URL = "https://arxiv.org/search/?query={title}&searchtype=title"
# Every number has a range, so inf, nan, 1e-6 or 1e300 is refused at load,
# naming its key, instead of spinning the scheduler or crashing a send.
HOUR = 3600
DAY = 86400
MAX_PAPERS = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HHMM = r"([01]\d|2[0-3]):[0-5]\d"
_SCHEDULE = re.compile(
    rf"^(instant|daily {_HHMM}|weekly (mon|tue|wed|thu|fri|sat|sun)[a-z]* {_HHMM})$", re.IGNORECASE
)
# Off while loading for a listing (``mailer subs list``), which shows queries
# as written and never matches with them: parsing every query is about half
# of a large configuration's load.
_CHECK_QUERIES: ContextVar[bool] = ContextVar("check_queries", default=True)


def _no_control(value: str) -> str:
    if value.isprintable():  # nearly every value, checked in C: no control character
        return value
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (CR, LF, NUL, ESC, ...)")
    return value


def _address(value: str) -> str:
    """A valid address, its domain in IDNA form and its local part as written
    (a non-ASCII one is delivered over SMTPUTF8; see mailer.addresses)."""
    _no_control(value)
    return normalise_address(value)


Text = Annotated[str, AfterValidator(_no_control)]
# The length checked on the string itself, by pydantic's core, not after the
# validator in Python (for every subscription of a large configuration).
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_no_control)]
# A host name of letters, digits and hyphens (IDNA form), or an address literal.
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]+\]"
)
Address = Annotated[str, AfterValidator(_address)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WatchConfig(_Section):
    dir: Path = Path("seeds")
    interval_seconds: float = Field(default=60.0, ge=0.1, le=DAY, allow_inf_nan=False)
    settle_seconds: float = Field(default=1.0, ge=0, le=HOUR, allow_inf_nan=False)
    # Larger files, or files with a longer line, are refused unread.
    max_dump_bytes: int = Field(default=DEFAULT_MAX_DUMP_BYTES, ge=1, le=2**30)
    max_line_bytes: int = Field(default=DEFAULT_MAX_LINE_BYTES, ge=1, le=2**26)
    # File events (inotify) wake the daemon at once; the rescan every
    # interval_seconds stays, for filesystems that send none (NFS, SMB).
    events: bool = True


class DatabaseConfig(_Section):
    url: str = "sqlite:///mailer.db"

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return value


class DeliveryConfig(_Section):
    transport: Literal["maildir", "smtp"] = "maildir"
    maildir: Path = Path("outbox")
    # Retries: the first back-off, doubled each failed attempt (with jitter) up
    # to the maximum; a message still undelivered after give_up is failed.
    retry_initial_seconds: float = Field(default=60.0, ge=1, le=30 * DAY, allow_inf_nan=False)
    retry_max_seconds: float = Field(default=3600.0, ge=1, le=30 * DAY, allow_inf_nan=False)
    give_up_after_seconds: float = Field(default=259200.0, ge=60, le=30 * DAY, allow_inf_nan=False)


class SmtpConfig(_Section):
    host: Text = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: Text = ""
    password: SecretStr = SecretStr("")
    sender: Text = "Paper Digest <digest@example.org>"
    timeout_seconds: float = Field(default=30.0, ge=1, le=600, allow_inf_nan=False)
    max_connections: int = Field(default=4, ge=1, le=100)
    rate_per_minute: float = Field(default=0.0, ge=0, le=100000, allow_inf_nan=False)  # 0: no limit
    # The name given in EHLO/HELO; empty: this machine's FQDN (socket.getfqdn()).
    local_hostname: Text = ""
    # The envelope sender (where bounces go); empty: the From address. When
    # set, each message's is return_path's local part + a token naming the
    # delivery (VERP, mailer.verp), unless verp is false.
    return_path: Text = ""
    verp: bool = True

    @field_validator("local_hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if value and not _HOSTNAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a host name like mail.example.org "
                "(or an address literal like [192.0.2.1])"
            )
        return value

    @field_validator("return_path")
    @classmethod
    def _return_path(cls, value: str) -> str:
        return _address(value) if value else value

    @field_validator("sender")
    @classmethod
    def _sender_has_address(cls, value: str) -> str:
        written = parseaddr(value)[1]
        if not written:
            raise ValueError(f"{value!r} has no email address, like Digest <digest@example.org>")
        return value.replace(written, _address(written))

    @property
    def sender_address(self) -> str:
        return parseaddr(self.sender)[1]


class RenderConfig(_Section):
    templates: Path | None = None
    paper_url: str = DEFAULT_PAPER_URL
    max_papers: int = Field(default=50, ge=1, le=MAX_PAPERS)

    @field_validator("paper_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from mailer.render import check_paper_url  # Jinja2 only when a config is loaded

        return check_paper_url(value)


class WebConfig(_Section):
    """The unsubscribe endpoint, and the readers' own pages with
    ``self_service``; off unless ``listen`` is set."""

    listen: Text = ""
    base_url: Text = ""
    secret: SecretStr = Field(default=SecretStr(""), validate_default=True)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not value:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT like 127.0.0.1:8080")
        return value

    @field_validator("base_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value:
            return value
        url = urlsplit(value)
        local = url.hostname in LOCAL_HOSTS
        if not url.hostname or not (url.scheme == "https" or (url.scheme == "http" and local)):
            raise ValueError(
                "must be an https:// URL like https://digest.example.org "
                "(http:// only for localhost)"
            )
        if url.query or url.fragment:
            raise ValueError("must not have a ?query or #fragment")
        return value.rstrip("/")

    @field_validator("secret")
    @classmethod
    def _needed(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        wanted = info.data.get("listen") or info.data.get("base_url")
        if wanted and len(value.get_secret_value()) < 16:
            raise ValueError(
                "needs at least 16 characters when web.listen or web.base_url is set; "
                "it signs the unsubscribe links (better: set MAILER_WEB__SECRET)"
            )
        return value

    # The readers' own pages (mailer.selfservice, README "Self-service pages").
    self_service: bool = False
    config_subscriber_pages: Literal["read-only", "minimal"] = "read-only"
    signups_per_ip_per_hour: int = Field(default=10, ge=1, le=10000)
    signups_per_address_per_hour: int = Field(default=3, ge=1, le=100)
    client_ip_header: Text = Field(default="", pattern=r"^[A-Za-z0-9-]*$")

    @model_validator(mode="after")
    def _self_service_served(self) -> WebConfig:
        if self.self_service and not (self.listen and self.base_url):
            raise ValueError(
                "web.self_service needs web.listen (where the pages are served) and "
                "web.base_url (the links in mails point there)"
            )
        return self


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


_DNS_LABELS = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*$")


def dns_name(value: str) -> str:
    """A DNS name in ASCII (a DKIM domain or selector), lower-cased."""
    if value and not _DNS_LABELS.match(value):
        raise ValueError(f"{value!r} is not a DNS name like example.org (IDNA form for non-ASCII)")
    return value.lower()


class DkimConfig(_Section):
    """DKIM signing of every message; off while ``domain`` is empty."""

    domain: Annotated[str, AfterValidator(dns_name)] = ""
    selector: Annotated[str, AfterValidator(dns_name)] = ""
    private_key_file: Path | None = None  # relative to the config file
    private_key: SecretStr = SecretStr("")  # the PEM itself, from MAILER_DKIM__PRIVATE_KEY

    @model_validator(mode="after")
    def _complete(self) -> DkimConfig:
        if not self.domain:
            return self
        if not self.selector:
            raise ValueError('dkim.selector is needed when dkim.domain is set, like "digest"')
        if not self.private_key_file and not self.private_key.get_secret_value():
            raise ValueError(
                "dkim.domain is set but there is no key: set dkim.private_key_file "
                "or MAILER_DKIM__PRIVATE_KEY ('mailer dkim keygen' makes one)"
            )
        return self


class BouncesConfig(_Section):
    """The mailbox where bounces and unsubscribe replies arrive (mailer.bounces);
    off while neither ``maildir`` nor ``imap_url`` is set."""

    maildir: Path | None = None  # relative to the config file
    imap_url: Text = ""  # imaps://user@host[:port][/mailbox]
    password: SecretStr = SecretStr("")  # better: MAILER_BOUNCES__PASSWORD
    ca_file: Path | None = None  # trust this CA (PEM) for imap_url besides the system's
    hard_limit: int = Field(default=1, ge=1, le=100)
    soft_limit: int = Field(default=3, ge=1, le=100)
    soft_window_days: int = Field(default=14, ge=1, le=365)

    @field_validator("imap_url")
    @classmethod
    def _imaps(cls, value: str) -> str:
        if not value:
            return value
        url = urlsplit(value)
        try:
            port = url.port
        except ValueError:
            port = -1
        if url.scheme != "imaps" or not url.username or not url.hostname or port == -1:
            raise ValueError(
                f"{value!r} is not an IMAP-over-TLS URL like imaps://digest@mail.example.org/INBOX"
            )
        if url.password is not None:
            raise ValueError("must not hold the password: set MAILER_BOUNCES__PASSWORD")
        return value

    @model_validator(mode="after")
    def _one_mailbox(self) -> BouncesConfig:
        if self.maildir and self.imap_url:
            raise ValueError("set bounces.maildir or bounces.imap_url, not both")
        return self


class DaemonConfig(_Section):
    # Rewritten after every completed pass, so a supervisor can tell a hung daemon.
    heartbeat: Path = Path("mailer.heartbeat")
    # Several daemons on one PostgreSQL database (mailer.cluster): this one's
    # name (empty: host:pid), and how long a dead node's leadership and claims last.
    node_id: Annotated[Text, Field(max_length=200)] = ""
    lease_seconds: float = Field(default=30.0, ge=1, le=HOUR, allow_inf_nan=False)


class SubscriptionConfig(_Section):
    name: NonEmptyText
    stemming: bool = True  # before query, so the query validator sees it
    query: str = ""
    # "More like these": titles of stored papers and/or a description; then
    # ``query`` (if any) only filters, and papers are ranked by similarity.
    like: list[NonEmptyText] = Field(default_factory=list)
    like_text: Text = ""
    top: int | None = Field(default=None, ge=1, le=MAX_PAPERS)  # None: DEFAULT_TOP
    threshold: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)

    @field_validator("query")
    @classmethod
    def _parses(cls, value: str, info: ValidationInfo) -> str:
        if not value or not _CHECK_QUERIES.get():
            return value  # a similarity subscription needs none (checked below)
        try:
            from mailer.query import parsed_query  # a listing's load parses no query

            parsed_query(value, bool(info.data.get("stemming", True)))
        except QueryError as exc:
            raise ValueError(exc.message) from exc
        return value

    @model_validator(mode="after")
    def _something_to_match(self) -> SubscriptionConfig:
        if not self.query and not self.like and not self.like_text.strip():
            raise ValueError("needs a query, or example papers in like (or like_text)")
        if not self.similar and (self.top is not None or self.threshold is not None):
            raise ValueError("top and threshold apply only with like or like_text")
        return self

    @property
    def similar(self) -> bool:
        """Whether papers are taken by similarity to examples."""
        return bool(self.like or self.like_text.strip())

    @property
    def described(self) -> str:
        """The query, or what the subscription is like, in one line (the
        database's copy of the subscription)."""
        if not self.similar:
            return self.query
        parts = [f"like {t!r}" for t in self.like]
        if self.like_text.strip():
            parts.append(f"like_text {self.like_text.strip()!r}")
        if self.query:
            parts.append(f"query {self.query!r}")
        return "; ".join(parts)


class SubscriberConfig(_Section):
    email: Address
    name: Text = ""
    schedule: str = "instant"
    timezone: str = "UTC"
    max_papers: int | None = Field(default=None, ge=1, le=MAX_PAPERS)  # None: [render]
    # An unsubscribe (link click, reply, 'mailer unsubscribe') recorded before
    # this time is lifted; one recorded after it stands, so reloads never undo it.
    resubscribed: datetime | None = None
    # "Suggested for you": papers no subscription matched that their model
    # (trained from their "more like this" marks) scores high.
    suggestions: bool = True
    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)

    @field_validator("resubscribed", mode="before")
    @classmethod
    def _resubscribed(cls, value: object) -> object:
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        value = " ".join(value.split())
        if not _SCHEDULE.match(value):
            raise ValueError("must be 'instant', 'daily HH:MM' or 'weekly DAY HH:MM'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone like Europe/London") from exc
        return value

    @model_validator(mode="after")
    def _unique_subscription_names(self) -> SubscriberConfig:
        names = [s.name for s in self.subscriptions]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"subscription names must be unique; repeated: {', '.join(dupes)}")
        return self


class Config(BaseModel):
    """All settings; see config.example.toml for every key with its meaning.
    MAILER_* environment variables override the file's keys: see :func:`settings`."""

    # As pydantic-settings' BaseSettings validates (mailer.config_env.EnvConfig).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    watch: WatchConfig = WatchConfig()
    database: DatabaseConfig = DatabaseConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    smtp: SmtpConfig = SmtpConfig()
    render: RenderConfig = RenderConfig()
    web: WebConfig = WebConfig()
    dkim: DkimConfig = DkimConfig()
    bounces: BouncesConfig = BouncesConfig()
    daemon: DaemonConfig = DaemonConfig()
    subscribers: list[SubscriberConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_subscribers(self) -> Config:
        emails = Counter(address_key(s.email) for s in self.subscribers)
        dupes = sorted(e for e, n in emails.items() if n > 1)
        if dupes:
            raise ValueError(f"subscriber emails must be unique; repeated: {', '.join(dupes)}")
        return self

    def subscriber(self, email: str) -> SubscriberConfig:
        for sub in self.subscribers:
            if address_key(sub.email) == address_key(email):
                return sub
        raise ConfigError(
            f"no subscriber {email!r} in the configuration",
            hint="see the [[subscribers]] tables, or 'mailer check-config'",
        )


def settings(data: dict[str, Any]) -> Config:
    """The configuration of a file's ``data``, with the MAILER_* environment
    variables over its keys. pydantic-settings reads those (EnvConfig); it is
    loaded only when a variable may name a key, as loading it costs a tenth
    of a quick command such as ``mailer subs list``."""
    if not _environment_overrides():
        return Config(**data)
    from mailer.config_env import EnvConfig

    return EnvConfig(**data)


def _environment_overrides() -> bool:
    """Whether a MAILER_<KEY> variable names a top-level key."""
    return environment_overrides(Config.model_fields, os.environ)


def example_config_text() -> str:
    """The bundled config.example.toml: the embedded default configuration."""
    packaged = resources.files("mailer").joinpath("config.example.toml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).parent.parent / "config.example.toml").read_text(encoding="utf-8")


def parse_config(
    text: str,
    *,
    source: str,
    base_dir: Path | None = None,
    check_queries: bool = True,
    file: Path | None = None,
) -> Config:
    """Validate TOML text as a configuration; relative paths resolve from
    ``base_dir``. ``check_queries=False`` leaves the queries unparsed, for
    commands that only show them. ``file``: the file ``text`` is (or is about
    to be) the contents of; a full validation is cached for it, as by
    ``load_config``, so the next command to read it starts warm."""
    config, data = _validated(text, source, check_queries)
    if file is not None and check_queries and (cache := cache_file(file)):
        _save_cache(cache, cache_key(text.encode("utf-8")), data, config)
    return _resolve(config, base_dir) if base_dir else config


def _validated(text: str, source: str, check_queries: bool) -> tuple[Config, dict[str, Any]]:
    """The configuration, unresolved, and the TOML data it was validated from."""
    import tomllib  # not for a load from the cache

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: not valid TOML: {exc}", hint="fix the syntax at that line and column"
        ) from exc
    checking = _CHECK_QUERIES.set(check_queries)
    try:
        with gc_paused():  # a third of a large configuration's load, finding nothing
            config = settings(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source, data), hint="see config.example.toml") from exc
    finally:
        _CHECK_QUERIES.reset(checking)
    return config, data


def load_config(
    path: Path | None, *, check_queries: bool = True, cached: bool = True
) -> tuple[Config, str]:
    """Load ``path`` (or config.toml, or else the embedded example) and say which.
    ``cached``: a file whose very bytes were fully validated before by this
    code is taken from the cache (mailer.config_cache) without parsing its TOML,
    addresses or queries again; ``check-config`` passes False."""
    path = config_file(path)
    if path is None:
        example = parse_config(
            example_config_text(), source="<embedded example>", check_queries=check_queries
        )
        return example, "embedded example"
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the configuration: {exc.strerror}",
            hint="pass --config PATH or set MAILER_CONFIG; copy config.example.toml to start",
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text", hint="save it as UTF-8") from exc
    base_dir = path.resolve().parent
    cache = cache_file(path)
    key = cache_key(raw) if cache else ""
    config = _from_cache(cache, key) if cache and cached else None
    if config is None:
        # As Path.read_text reads it: universal newlines.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        config, data = _validated(text, str(path), check_queries)
        if cache and check_queries:
            _save_cache(cache, key, data, config)
    return _resolve(config, base_dir), str(path)


# --- the cache of validated configurations (mailer.config_cache) -------------


def _from_cache(cache: Path, key: str) -> Config | None:
    """The configuration as validated when the cache was written; None when
    there is no usable cache for exactly these bytes (or the environment now
    makes it invalid: then the full load says why, as always)."""
    found = read_cache(cache, key)
    if found is None:
        return None
    checking = _CHECK_QUERIES.set(False)  # every query parsed when this was written
    try:
        with gc_paused():  # the models: many objects, no cycles
            return settings(found.data)
    except ValidationError:
        return None
    finally:
        _CHECK_QUERIES.reset(checking)


def _save_cache(cache: Path, key: str, data: dict[str, Any], config: Config) -> None:
    """Cache the load, with the addresses validated so far (all valid:
    failures are not kept) and the summary quick commands read."""
    from mailer.subscriber_list import config_rows

    for sub in config.subscribers:  # as the store will look them up
        normalise_address(sub.email)
    # A summary of the file alone: not of values the environment put over it.
    summary = (
        None
        if _environment_overrides()
        else Summary(tuple(Config.model_fields), config.database.url, config_rows(config))
    )
    write_cache(cache, key, Cached(data, remembered_addresses(), summary))


def _resolve(config: Config, base: Path) -> Config:
    def at(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    url = resolved_url(config.database.url, base)
    templates = config.render.templates
    key_file = config.dkim.private_key_file
    bounces = config.bounces
    return config.model_copy(
        update={
            "watch": config.watch.model_copy(update={"dir": at(config.watch.dir)}),
            "delivery": config.delivery.model_copy(update={"maildir": at(config.delivery.maildir)}),
            "database": config.database.model_copy(update={"url": url}),
            "daemon": config.daemon.model_copy(update={"heartbeat": at(config.daemon.heartbeat)}),
            "render": config.render.model_copy(
                update={"templates": at(templates) if templates else None}
            ),
            "dkim": config.dkim.model_copy(
                update={"private_key_file": at(key_file) if key_file else None}
            ),
            "bounces": config.bounces.model_copy(
                update={
                    "maildir": at(bounces.maildir) if bounces.maildir else None,
                    "ca_file": at(bounces.ca_file) if bounces.ca_file else None,
                }
            ),
        }
    )


def _explain(exc: ValidationError, source: str, data: dict[str, Any]) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        loc = error["loc"]
        key = _key_name(loc, data)
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            msg = "unknown key (misspelt, or in the wrong [section]?)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _key_name(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """subscribers[0].subscriptions[1].query, with the subscriber's email for
    orientation, so the operator can find the key in a long file."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                ident = node[item].get("email") or node[item].get("name")
                if ident:
                    label = f"[{item}] ({ident})"
            parts.append(label)
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(("." if parts else "") + item)
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"
