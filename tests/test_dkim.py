"""DKIM: every digest signed when composed, verified on the bytes an SMTP
server received (dkimpy's verifier, the record served by ``dnsfunc`` rather
than DNS); the key made by ``mailer dkim keygen`` and checked by
``check-config``."""

from __future__ import annotations

import multiprocessing
import re
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dkim
import pytest

import mailer.pipeline.compose as compose_module
from mailer.config import parse_config
from mailer.dkim import DkimSigner, generate_key, load_signer, public_key_value
from mailer.errors import ConfigError
from mailer.pipeline.compose import init_worker
from tests.conftest import SmtpServer
from tests.test_cli import copy_seeds, mailer, write_config
from tests.test_pipeline import Harness, config_for

DOMAIN = "example.org"
SELECTOR = "digest2026"
RECORD_NAME = f"{SELECTOR}._domainkey.{DOMAIN}"

DnsFunc = Callable[..., bytes]


@pytest.fixture(scope="module")
def key() -> bytes:
    return generate_key(2048)


def dns_serving(pem: bytes) -> DnsFunc:
    """A resolver that knows one record: the public half of ``pem`` at RECORD_NAME."""
    record = f"v=DKIM1; k=rsa; p={public_key_value(pem)}".encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name.decode().rstrip(".") == RECORD_NAME else b""

    return dnsfunc


def dkim_section(key_file: str = "dkim.pem") -> str:
    return f'[dkim]\ndomain = "{DOMAIN}"\nselector = "{SELECTOR}"\nprivate_key_file = "{key_file}"'


@pytest.fixture
def signing(tmp_path: Path, smtp_server: SmtpServer, key: bytes) -> Iterator[Harness]:
    (tmp_path / "dkim.pem").write_bytes(key)
    h = Harness(tmp_path, smtp_server.port, extra=dkim_section())
    yield h
    h.store.close()


def signature_tags(data: bytes) -> dict[str, str]:
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode()
    match = re.search(r"^DKIM-Signature:(.*?)(?=^\S)", head + "\nX:", re.MULTILINE | re.DOTALL)
    assert match, "no DKIM-Signature header"
    value = re.sub(r"\s+", "", match.group(1))
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def test_every_digest_sent_carries_a_signature_the_receiver_verifies(
    signing: Harness, smtp_server: SmtpServer, key: bytes
) -> None:
    signing.drop_seeds()
    assert signing.run().sent == 2
    for received in smtp_server.messages:
        assert dkim.verify(received.data, dnsfunc=dns_serving(key)), received.recipients


def test_the_outbox_holds_exactly_the_signed_bytes_that_were_sent(
    signing: Harness, smtp_server: SmtpServer
) -> None:
    signing.drop_seeds()
    signing.run()
    stored = {d.recipient: d.message for d in signing.store.deliveries()}
    # SMTP carries lines ending CRLF; the outbox keeps them as LF.
    received = {m.recipients[0]: m.data.replace(b"\r\n", b"\n") for m in smtp_server.messages}
    assert received == stored
    assert all(m.startswith(b"DKIM-Signature:") for m in stored.values())


def test_the_signature_is_relaxed_rsa_sha256_over_the_headers_receivers_act_on(
    signing: Harness, smtp_server: SmtpServer
) -> None:
    signing.drop_seeds()
    signing.run()
    tags = signature_tags(smtp_server.messages[0].data)
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
        "rsa-sha256",
        "relaxed/relaxed",
        DOMAIN,
        SELECTOR,
    )
    assert tags["h"].split(":") == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "list-unsubscribe",
    ]


def test_one_click_unsubscribe_headers_are_signed_when_present(
    tmp_path: Path, smtp_server: SmtpServer, key: bytes
) -> None:
    (tmp_path / "dkim.pem").write_bytes(key)
    web = '[web]\nbase_url = "https://digest.example.org"\nsecret = "0123456789abcdef0123"\n'
    h = Harness(tmp_path, smtp_server.port, extra=web + dkim_section())
    h.drop_seeds()
    h.run()
    h.store.close()
    received = smtp_server.messages[0].data
    assert "list-unsubscribe-post" in signature_tags(received)["h"].split(":")
    assert dkim.verify(received, dnsfunc=dns_serving(key))


def test_a_message_changed_in_transit_fails_verification(
    signing: Harness, smtp_server: SmtpServer, key: bytes
) -> None:
    signing.drop_seeds()
    signing.run()
    data = smtp_server.messages[0].data
    tampered = re.sub(rb"^Subject: ", b"Subject: Re: ", data, count=1, flags=re.MULTILINE)
    assert tampered != data
    assert not dkim.verify(tampered, dnsfunc=dns_serving(key))


def test_without_a_dkim_section_nothing_is_signed(tmp_path: Path, smtp_server: SmtpServer) -> None:
    h = Harness(tmp_path, smtp_server.port)
    h.drop_seeds()
    h.run()
    h.store.close()
    assert smtp_server.messages
    assert not any(b"DKIM-Signature" in m.data for m in smtp_server.messages)


def test_worker_processes_sign_what_they_compose(
    signing: Harness, smtp_server: SmtpServer, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose_module, "POOL_THRESHOLD", 0)
    monkeypatch.setattr(signing.pipeline, "renderer", None)  # composing here would fail
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(signing.config.database.url,),
    ) as pool:
        signing.pipeline.compose_pool = pool
        signing.drop_seeds()
        assert signing.run().sent == 2
    for received in smtp_server.messages:
        assert dkim.verify(received.data, dnsfunc=dns_serving(key))


def test_mailer_ingest_signs_with_the_configured_key(
    tmp_path: Path, smtp_server: SmtpServer, key: bytes
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    with config.open("a", encoding="utf-8") as f:
        f.write(dkim_section("keys/dkim.pem"))
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "dkim.pem").write_bytes(key)
    copy_seeds(tmp_path / "dumps")
    result = mailer("--config", str(config), "ingest", cwd=tmp_path / "keys")
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.messages) == 2
    for received in smtp_server.messages:
        assert dkim.verify(received.data, dnsfunc=dns_serving(key))


def test_the_key_can_come_from_the_environment(
    tmp_path: Path, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILER_DKIM__PRIVATE_KEY", key.decode())
    config = parse_config(
        f'[dkim]\ndomain = "{DOMAIN}"\nselector = "{SELECTOR}"\n', source="t", base_dir=tmp_path
    )
    signer = load_signer(config.dkim)
    assert signer is not None
    message = b"From: a@example.org\nTo: b@example.org\nSubject: hi\n\nhello\n"
    assert dkim.verify(signer.sign(message), dnsfunc=dns_serving(key))


def test_the_key_never_shows_in_a_repr(tmp_path: Path, key: bytes) -> None:
    (tmp_path / "dkim.pem").write_bytes(key)
    config = parse_config(dkim_section(), source="t", base_dir=tmp_path)
    signer = load_signer(config.dkim)
    secret_line = key.splitlines()[5].decode()
    assert secret_line not in repr(signer)
    assert secret_line not in repr(DkimSigner(DOMAIN, SELECTOR, key))


def test_a_domain_without_a_key_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no key"):
        parse_config(f'[dkim]\ndomain = "{DOMAIN}"\nselector = "s"\n', source="t")


# --- mailer dkim keygen ---------------------------------------------------------


def txt_value(output: str) -> str:
    """The record's value: its quoted strings joined, as a resolver returns it."""
    line = next(x for x in output.splitlines() if " IN TXT " in x)
    return "".join(re.findall(r'"([^"]*)"', line))


def test_keygen_writes_an_owner_only_key_and_prints_its_record(tmp_path: Path) -> None:
    result = mailer(
        "dkim", "keygen", "--selector", SELECTOR, "--domain", DOMAIN, "--out", "k.pem",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    path = tmp_path / "k.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line = next(x for x in result.stdout.splitlines() if " IN TXT " in x)
    assert line.startswith(f"{RECORD_NAME} IN TXT ")
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', line))
    value = txt_value(result.stdout)
    assert value == f"v=DKIM1; k=rsa; p={public_key_value(path.read_bytes())}"


def test_keygen_record_verifies_what_the_key_signs(tmp_path: Path) -> None:
    result = mailer(
        "dkim", "keygen", "--selector", SELECTOR, "--domain", DOMAIN, "--out", "k.pem",
        cwd=tmp_path,
    )  # fmt: skip
    signer = DkimSigner(DOMAIN, SELECTOR, (tmp_path / "k.pem").read_bytes())
    record = txt_value(result.stdout).encode()
    signed = signer.sign(b"From: a@example.org\nSubject: hi\n\nhello\n")
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)


def test_keygen_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("the published key\n")
    result = mailer(
        "dkim", "keygen", "--selector", SELECTOR, "--domain", DOMAIN, "--out", "k.pem",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert (tmp_path / "k.pem").read_text() == "the published key\n"


# --- check-config ---------------------------------------------------------------


def check_config_with_key(tmp_path: Path, make_key: Callable[[Path], object]) -> str:
    config = write_config(tmp_path)
    with config.open("a", encoding="utf-8") as f:
        f.write(dkim_section())
    make_key(tmp_path / "dkim.pem")
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert "configuration OK" not in result.stdout
    return result.stderr


def test_check_config_reports_a_missing_key(tmp_path: Path) -> None:
    stderr = check_config_with_key(tmp_path, lambda path: None)
    assert "dkim.private_key_file" in stderr
    assert "No such file" in stderr


def test_check_config_reports_an_unreadable_key(tmp_path: Path) -> None:
    stderr = check_config_with_key(tmp_path, lambda path: path.mkdir())
    assert "dkim.private_key_file" in stderr
    assert "cannot read the key" in stderr


def test_check_config_reports_a_garbage_key(tmp_path: Path) -> None:
    stderr = check_config_with_key(tmp_path, lambda path: path.write_text("not a key\n"))
    assert "dkim.private_key_file" in stderr
    assert "not a PEM private key" in stderr


def test_check_config_prints_the_record_the_key_needs(tmp_path: Path, key: bytes) -> None:
    config = write_config(tmp_path)
    with config.open("a", encoding="utf-8") as f:
        f.write(dkim_section())
    (tmp_path / "dkim.pem").write_bytes(key)
    result = mailer("--config", str(config), "check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert RECORD_NAME in result.stdout
    assert f"p={public_key_value(key)}" in result.stdout


def test_a_reload_with_a_bad_key_keeps_signing_with_the_last_good_one(
    signing: Harness, smtp_server: SmtpServer, key: bytes, tmp_path: Path
) -> None:
    (tmp_path / "garbage.pem").write_text("not a key\n")
    bad = config_for(tmp_path, smtp_server.port, extra=dkim_section("garbage.pem"))
    with pytest.raises(ConfigError, match=r"dkim\.private_key_file"):
        signing.pipeline.configure(bad)
    signing.drop_seeds()
    signing.run()
    for received in smtp_server.messages:
        assert dkim.verify(received.data, dnsfunc=dns_serving(key))
