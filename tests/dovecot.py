"""A private Dovecot IMAP server on loopback, for the bounce-mailbox tests.

Debian's ``dovecot-imapd``, started by the test as an unprivileged user with
a configuration of its own: IMAPS only (``ssl = required``) with a
certificate from a CA made here, one user with a plain password, mail in a
Maildir the test delivers into. Run as root (CI), it runs as ``nobody``,
since Dovecot refuses to serve mail as root.
"""

from __future__ import annotations

import getpass
import grp
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import free_port
from tests.waiting import wait_for

USER = "bounces"
PASSWORD = "imap-secret-for-tests"


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


@dataclass(frozen=True)
class Dovecot:
    host: str
    port: int
    ca_file: Path  # the CA that signed the server's certificate
    maildir: Path  # the user's INBOX, to deliver into
    log: Path

    @property
    def url(self) -> str:
        return f"imaps://{USER}@{self.host}:{self.port}/INBOX"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(folder: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for ``host`` (an IP address):
    (CA certificate, server certificate, server key), as PEM files."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("mailer test CA"))
        .issuer_name(_name("mailer test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _config(folder: Path, user: str, group: str, port: int, cert: Path, key: Path) -> str:
    return f"""\
base_dir = {folder}/run
state_dir = {folder}/state
instance_name = mailer-test-{port}
listen = 127.0.0.1
protocols = imap
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
log_path = {folder}/dovecot.log
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {folder}/passwd
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={folder}/home
}}
mail_location = maildir:{folder}/home/Maildir
first_valid_uid = 1
first_valid_gid = 1
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def running_dovecot(binary: str) -> Iterator[Dovecot]:
    """Dovecot on a free loopback port, stopped and removed on exit. Its
    files live in a folder of their own under /tmp: Dovecot's socket paths
    must be short, and its user must be able to reach them."""
    host, port = "127.0.0.1", free_port()
    folder = Path(tempfile.mkdtemp(prefix="mailer-dovecot-"))
    as_root = os.geteuid() == 0
    user = "nobody" if as_root else getpass.getuser()
    account = pwd.getpwnam(user)
    group = grp.getgrgid(account.pw_gid).gr_name
    ca, cert, key = make_certificates(folder, host)
    maildir = folder / "home" / "Maildir"
    for sub in ("run", "state", "home/Maildir/new", "home/Maildir/cur", "home/Maildir/tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n", encoding="utf-8")
    config = folder / "dovecot.conf"
    config.write_text(_config(folder, user, group, port, cert, key), encoding="utf-8")
    if as_root:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)
    log = folder / "dovecot.log"
    process = subprocess.Popen(
        [binary, "-F", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        user=account.pw_uid if as_root else None,
        group=account.pw_gid if as_root else None,
        extra_groups=[] if as_root else None,
    )
    try:

        def up() -> bool:
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                log_text = log.read_text() if log.exists() else ""
                raise AssertionError(f"dovecot exited: {stderr}{log_text}")
            return _accepting(host, port)

        wait_for(up, what=f"dovecot to listen on {host}:{port}")
        yield Dovecot(host, port, ca, maildir, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
        shutil.rmtree(folder, ignore_errors=True)
