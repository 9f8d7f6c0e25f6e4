"""The CLI's quick commands load only what they use (issue 18)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mailer import migrate
from mailer.store import Store

HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "aiohttp", "apscheduler", "jinja2")


def imported_modules(*args: str, cwd: Path | None = None) -> set[str]:
    """The modules ``python -X importtime -m mailer ARGS`` imports, by name."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mailer", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    )
    return {
        line.rpartition("|")[2].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }


def test_mailer_version_imports_no_database_web_scheduler_or_template_library() -> None:
    modules = imported_modules("--version")
    assert "mailer.cli" in modules
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert loaded == []


def test_mailer_help_imports_no_database_web_scheduler_or_template_library() -> None:
    modules = imported_modules("--help")
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert loaded == []


def test_the_pass_loads_scikit_learn_only_for_similarity_or_readers_models() -> None:
    # A second and 100 MB in the daemon and in every compose worker.
    done = subprocess.run(
        [sys.executable, "-c", "import sys, mailer.pipeline, mailer.actions; print(*sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "mailer.pipeline" in done.stdout.split()
    assert [m for m in done.stdout.split() if m.split(".")[0] == "sklearn"] == []


def listed_config(folder: Path) -> Path:
    """A configuration of one subscriber, and its database, created at head."""
    config = folder / "config.toml"
    config.write_text(
        '[[subscribers]]\nemail = "Ada@Example.org"\n'
        '[[subscribers.subscriptions]]\nname = "LLM"\nquery = "llm"\n',
        encoding="utf-8",
    )
    Store(f"sqlite:///{folder / 'mailer.db'}").close()
    return config


def test_subs_list_on_a_database_at_head_reads_it_without_sqlalchemy(tmp_path: Path) -> None:
    config = listed_config(tmp_path)
    modules = imported_modules("--config", str(config), "subs", "list", cwd=tmp_path)
    assert "mailer.store.listing" in modules
    quick = (*HEAVY, "sklearn", "pydantic_settings")  # no MAILER_ variable sets a key
    loaded = sorted(m for m in modules if m.split(".")[0] in quick)
    assert loaded == []


def test_the_head_known_from_the_revision_files_names_is_alembics_head() -> None:
    assert migrate.packaged_head(migrate.MIGRATIONS) == migrate.head()


def test_a_warm_subs_list_loads_no_typer_pydantic_or_address_validator(tmp_path: Path) -> None:
    config = listed_config(tmp_path)
    # A full load caches the file, judged by the code the command will run
    # (the installed copy, which need not be the checkout the tests import).
    subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), "check-config"],
        capture_output=True,
        check=True,
        cwd=tmp_path,
    )
    modules = imported_modules("--config", str(config), "subs", "list", cwd=tmp_path)
    assert "mailer.cli.quick" in modules
    full = (*HEAVY, "typer", "pydantic", "pydantic_core", "email_validator", "mailer.config")
    loaded = sorted(m for m in modules if m in full or m.split(".")[0] in full)
    assert loaded == []
