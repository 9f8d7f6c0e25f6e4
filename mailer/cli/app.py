"""The typer app, its global options and what every command shares: the
state built from them, the consoles, opening the store, and ``main``.

Every command catches only MailerError, prints its message and hint, and
exits with the error's status (2 for configuration, 1 otherwise).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
import typer.main
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from mailer import __version__
from mailer.cli import COMMANDS
from mailer.errors import MailerError
from mailer.ops import EMBEDDED, JsonFormatter, LogFormat

if TYPE_CHECKING:
    from typer import _click as click  # the click typer carries

    # Only for hints: the commands import what they use when they run, so
    # ``mailer --version`` or ``--help`` loads no database or template code.
    from mailer.config import Config
    from mailer.papers import Paper
    from mailer.store import Store
    from mailer.store.listing import Listing


class _Commands(MutableMapping[str, "click.Command"]):
    """The commands by name, each imported and built when first looked up."""

    def __init__(self, built: Mapping[str, click.Command]) -> None:
        self._built = dict(built)

    def _names(self) -> dict[str, None]:
        return dict.fromkeys([*COMMANDS, *self._built])

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            module, attribute = COMMANDS[name]
            found = getattr(importlib.import_module(f"mailer.cli.{module}"), attribute)
            if isinstance(found, typer.Typer):
                command: click.Command = typer.main.get_group(found)
            else:
                single = typer.Typer(add_completion=False)
                single.command(name)(found)
                command = typer.main.get_command(single)
            command.name = name
            self._built[name] = command
        return self._built[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._built

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


class LazyCommands(typer.core.TyperGroup):
    """The top-level group, whose commands are imported and built only when
    asked for: a command loads its own module, not every command's, and
    typer reads the signatures of its functions only (every command's, for
    ``--help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self.commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # the names, without building every command


app = typer.Typer(
    cls=LazyCommands,
    name="mailer",
    help="Email digests of new research papers from Hugging Face Daily Papers dumps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Text as written: no colours guessed from its shape, and no ":name:" in an
# address, query or path turned into an emoji (nor their table loaded).
err = Console(stderr=True, highlight=False, emoji=False)
out = Console(highlight=False, emoji=False)
log = logging.getLogger("mailer")


@dataclass
class State:
    """The global options; the configuration is loaded on first use, so
    commands that need none (``parse``) work without a valid one."""

    config_path: Path | None
    _loaded: tuple[Config, str] | None = None
    log_format: str = "text"
    _queries_checked: bool = False
    # check-config validates the file itself, never a cached verdict on it.
    full_check: bool = False

    def config(self, *, check_queries: bool = True) -> Config:
        """``check_queries=False``: for a command that only shows the queries
        (parsing them is most of a large configuration's load)."""
        if self._loaded is None or (check_queries and not self._queries_checked):
            from mailer.config import load_config

            self._loaded = load_config(
                self.config_path, check_queries=check_queries, cached=not self.full_check
            )
            self._queries_checked = check_queries
            log.debug("configuration from %s", self._loaded[1])
        return self._loaded[0]

    @property
    def config_source(self) -> str:
        if self._loaded is None:
            self.config()
        assert self._loaded is not None
        return self._loaded[1]

    def config_file(self) -> Path | None:
        """The file the configuration came from; None for the embedded example."""
        source = self.config_source
        return None if source == EMBEDDED else Path(source)


def setup_logging(verbose: bool, log_format: str = "text") -> None:
    """One handler on the root logger, so every line (mailer's, APScheduler's,
    aiohttp's, Alembic's, Python warnings and uncaught tracebacks) comes out
    in the chosen format; with ``json``, each line is one JSON object.
    Third-party loggers speak from WARNING up; mailer's own from INFO (DEBUG
    with ``-v``)."""
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        sys.excepthook = _log_uncaught
    elif sys.stderr.isatty():
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.handlers[:] = []
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = True
    logging.captureWarnings(True)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """An uncaught exception as a log record (a JSON line), not bare text."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    log.critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


def _version(value: bool) -> None:
    if value:
        out.print(f"mailer {__version__}")
        raise typer.Exit


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="MAILER_CONFIG",
            help="Configuration file [default: config.toml, else the built-in example].",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option("--log-format", help="Log lines as text, or one JSON object per line."),
    ] = LogFormat.text,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    setup_logging(verbose, log_format.value)
    ctx.obj = State(
        config,
        log_format=log_format.value,
        full_check=ctx.invoked_subcommand == "check-config",
    )


def state_of(ctx: typer.Context) -> State:
    """The global options, as ``main_options`` left them."""
    state = ctx.obj
    assert isinstance(state, State)
    return state


def open_store(config: Config) -> Store:
    from mailer.store import Store

    return Store(config.database.url)


def open_existing(config: Config) -> Store | None:
    """The store, or None when it does not exist yet (read-only commands)."""
    from mailer.store.listing import sqlite_missing

    return None if sqlite_missing(config.database.url) else open_store(config)


def stored_subscribers(config: Config) -> Listing:
    """What ``mailer subs list`` shows from the database (none when it does
    not exist yet), read without opening the store when it can be."""
    from mailer.store.listing import Listing, sqlite_missing, stored_listing

    url = config.database.url
    return Listing() if sqlite_missing(url) else stored_listing(url)


def meta_line(paper: Paper) -> str:
    """A paper's date, upvotes and organisation (or author count) on one line."""
    who = paper.organization or (
        f"{paper.authors} authors" if paper.authors is not None else "no authors listed"
    )
    when = paper.published.isoformat() if paper.published else "no date"
    return f"{when} · {paper.upvotes} upvotes · {who}"


def main() -> None:
    """Entry point: run the app, turning MailerError into a message and a status."""
    try:
        app()
    except MailerError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, markup=True)
        sys.exit(exc.exit_code)
