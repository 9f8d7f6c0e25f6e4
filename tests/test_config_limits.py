"""A configuration check-config accepts cannot crash a pass: every number is
finite and in range, paper_url cannot break a link, and the templates are
loaded in Jinja2's sandbox and tried on sample digests, with a budget per
render, so one that fails, loops or recurses is refused at load naming its
file and line, and a daemon reload keeps the last good configuration."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel

from mailer.config import Config, parse_config
from mailer.daemon import Daemon
from mailer.delivery import make_transport
from mailer.errors import ConfigError, TemplateError
from mailer.pipeline import Pipeline
from mailer.render import Renderer, default_templates_dir, sample_digests
from mailer.store import Store
from tests.test_cli import mailer, write_config


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.toml")
    return str(info.value)


def numeric_keys() -> list[tuple[str, str]]:
    """(section, key) of every number in the configuration's sections."""
    keys = []
    for section, field in Config.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key, info in model.model_fields.items():
                if info.annotation in (int, float):
                    keys.append((section, key))
    return keys


def test_the_numeric_keys_are_found() -> None:
    assert ("watch", "interval_seconds") in numeric_keys()
    assert ("smtp", "max_connections") in numeric_keys()
    assert len(numeric_keys()) >= 10


@pytest.mark.parametrize(("section", "key"), numeric_keys())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "-1e300"])
def test_every_number_must_be_finite_and_in_range(section: str, key: str, value: str) -> None:
    assert f"{section}.{key}:" in error_of(f"[{section}]\n{key} = {value}\n")


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("[watch]\ninterval_seconds = 1e-6", "watch.interval_seconds: Input should be greater"),
        ("[watch]\ninterval_seconds = 86401", "watch.interval_seconds: Input should be less"),
        ("[delivery]\nretry_max_seconds = inf", "delivery.retry_max_seconds: Input should be a"),
        ("[delivery]\ngive_up_after_seconds = 1", "delivery.give_up_after_seconds"),
        ("[smtp]\ntimeout_seconds = 0.001", "smtp.timeout_seconds"),
        ("[smtp]\nmax_connections = 1000", "smtp.max_connections"),
        ("[smtp]\nrate_per_minute = 1e9", "smtp.rate_per_minute"),
        ("[render]\nmax_papers = 100000", "render.max_papers"),
        ('[[subscribers]]\nemail = "a@b.org"\nmax_papers = 0', "subscribers[0] (a@b.org).max"),
    ],
)
def test_numbers_out_of_their_range_are_refused_naming_the_key(setting: str, says: str) -> None:
    assert says in error_of(setting + "\n")


def test_a_number_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_DELIVERY__RETRY_MAX_SECONDS", "inf")
    assert "delivery.retry_max_seconds: Input should be a finite number" in error_of("")


def test_check_config_exits_2_naming_an_infinite_interval(tmp_path: Path) -> None:
    config = write_config(tmp_path, interval=float("inf"))  # written as: interval_seconds = inf
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "watch.interval_seconds: Input should be a finite number" in result.stderr


# --- paper_url ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ('https://example.org/?q={title}\\"><script>alert(1)</script>', "'\"' (U+0022)"),
        ("https://example.org/?q={title}'", "(U+0027)"),
        ("https://example.org/\u2028?q={title}", "(U+2028)"),
        ("https://example.org/\u202e?q={title}", "(U+202E)"),
        ("https://example.org/?q={title}&x=<b>", "(U+003C)"),
        ("https://example.org/ {title}", "(U+0020)"),
        ("javascript:alert({title})", "http:// or https://"),
        ("https://example.org/search", "must contain {title}"),
    ],
)
def test_paper_url_that_would_break_a_link_is_refused(url: str, says: str) -> None:
    message = error_of(f'[render]\npaper_url = "{url}"\n')
    assert "render.paper_url:" in message
    assert says in message


def test_paper_url_is_percent_encoded_when_filled() -> None:
    renderer = Renderer(paper_url="https://example.org/ä/{title}?x={y}")
    digest, unsubscribe = sample_digests()[0]
    html = renderer.render(digest, unsubscribe_url=unsubscribe, manage_hint="-").html
    assert 'href="https://example.org/%C3%A4/Attention%20Is%20All' in html
    assert "?x=%7By%7D" in html


def test_check_config_exits_2_on_a_paper_url_with_a_line_separator(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '[render]\npaper_url = "https://x.org/\\u2028{title}"\n')
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "render.paper_url: must not contain '\\u2028' (U+2028)" in result.stderr


# --- templates -----------------------------------------------------------------------

LOOPS_FOREVER = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
    "{% endfor %}{% endfor %}{% endfor %}\n"
)
BAD_TEMPLATES = {
    "syntax error": ("{{ summary }}\n{% for x in sections %}\n{{ x.name }\n", 3, "unexpected '}'"),
    "raises": ("{{ summary }}\n{{ count // (count - count) }}\n", 2, "ZeroDivisionError"),
    "loops forever": ("{{ summary }}\n" + LOOPS_FOREVER, 2, "stopped: more than"),
    "recurses forever": (
        "{% macro down(n) %}{{ down(n + 1) }}{% endmacro %}\n{{ down(0) }}\n",
        1,
        "recursion too deep",
    ),
    "unsafe attribute": ("{{ recipient.__class__.__mro__ }}\n", 1, "unsafe"),
    "huge repetition": ("{{ 'x' * 1000000000 }}\n", 1, "too big"),
    "huge power": ("{{ 2 ** count ** count ** 100000 }}\n", 1, "too big"),
}


def templates_with(folder: Path, text_template: str) -> Path:
    """The built-in templates with digest.txt replaced."""
    shutil.copytree(default_templates_dir(), folder)
    (folder / "digest.txt").write_text(text_template, encoding="utf-8")
    return folder


@pytest.mark.parametrize("case", sorted(BAD_TEMPLATES))
def test_a_bad_template_is_refused_at_load_naming_its_file_and_line(
    tmp_path: Path, case: str
) -> None:
    body, line, says = BAD_TEMPLATES[case]
    folder = templates_with(tmp_path / "t", body)
    with pytest.raises(TemplateError) as info:
        Renderer(folder)
    assert f"{folder / 'digest.txt'}, line {line}: " in info.value.message
    assert says in info.value.message
    assert info.value.exit_code == 2


def test_an_html_template_error_names_the_line_in_the_file_not_the_inlined_source(
    tmp_path: Path,
) -> None:
    folder = templates_with(tmp_path / "t", "{{ summary }}\n")
    html = (folder / "digest.html").read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(html) if "<body" in line) + 2
    html.insert(at, "{{ count // (count - count) }}\n")
    (folder / "digest.html").write_text("".join(html))
    with pytest.raises(TemplateError, match=rf"digest\.html, line {at + 1}: .*ZeroDivision"):
        Renderer(folder)


def test_the_render_budget_holds_outside_the_main_thread(tmp_path: Path) -> None:
    folder = templates_with(tmp_path / "t", LOOPS_FOREVER)
    with ThreadPoolExecutor(1) as pool:
        error = pool.submit(Renderer, folder).exception(timeout=60)
    assert isinstance(error, TemplateError)
    assert "stopped" in error.message


@pytest.mark.parametrize("case", ["syntax error", "raises", "loops forever"])
def test_check_config_refuses_a_bad_template_naming_the_file(tmp_path: Path, case: str) -> None:
    body, line, says = BAD_TEMPLATES[case]
    folder = templates_with(tmp_path / "mine", body)
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '[render]\ntemplates = "mine"\n')
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{folder / 'digest.txt'}, line {line}: " in result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["syntax error", "raises", "loops forever"])
def test_a_daemon_reload_keeps_the_last_good_config_for_a_bad_template(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    templates_with(tmp_path / "mine", BAD_TEMPLATES[case][0])
    path = write_config(tmp_path)
    good = parse_config(path.read_text(), source=str(path), base_dir=tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'mailer.db'}")
    try:
        pipeline = Pipeline(good, store, lambda: make_transport(pipeline.config))
        daemon = Daemon(pipeline, 60, config_path=path)
        path.write_text(path.read_text() + '[render]\ntemplates = "mine"\n')
        assert daemon.reload_if_changed() is False
        assert pipeline.config is good
    finally:
        store.close()
    assert "not reloaded, still running on the last good configuration" in caplog.text
    assert "digest.txt, line" in caplog.text
