"""DKIM signatures (RFC 6376), which Gmail and Yahoo require of bulk senders.

Pure: message bytes and a key in, signed bytes out; the key is loaded (and
checked) once per configuration, so a bad key is a ConfigError at start,
naming the setting, never a failure at send time. Signing happens when a
message is composed, so the outbox holds exactly the bytes that are sent.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailer.errors import ConfigError

if TYPE_CHECKING:
    from mailer.config import DkimConfig

# dkimpy and cryptography are imported where used: the CLI imports this
# module (for MIN_BITS) to build ``mailer dkim keygen``, and its quick
# commands should not pay for them.

# The headers a digest has that a receiver shows or acts on; only those
# present in a message are signed.
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
MIN_BITS = 1024  # RFC 8301: verifiers must refuse smaller RSA keys
DNS_STRING = 255  # a TXT record's strings hold at most 255 characters each
_HEADER_NAME = re.compile(rb"^([!-9;-~]+):", re.MULTILINE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True, slots=True)
class DkimSigner:
    """A loaded key and where its public half is published; picklable, so it
    travels to compose worker processes with each chunk."""

    domain: str
    selector: str
    private_key: bytes = field(repr=False)  # PKCS#1 PEM, as dkimpy reads it

    def sign(self, message: bytes) -> bytes:
        """``message`` with a DKIM-Signature header (relaxed/relaxed,
        rsa-sha256) prepended, over those of SIGNED_HEADERS it has."""
        import dkim as dkimpy

        head = _HEAD_END.split(message, 1)[0]
        present = {m.lower() for m in _HEADER_NAME.findall(head)}
        headers = [h.lower().encode() for h in SIGNED_HEADERS if h.lower().encode() in present]
        linesep = b"\r\n" if b"\r\n" in head else b"\n"
        signature: bytes = dkimpy.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256",
            include_headers=headers,
            linesep=linesep,
        )
        return signature + message

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def public_key(self) -> str:
        """The base64 ``p=`` value of the DNS record."""
        return public_key_value(self.private_key)

    @property
    def record_value(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_key}"

    def check(self) -> None:
        """Sign a message and verify it against the record this key asks for,
        so a key dkimpy cannot use is found before any digest is sent."""
        import dkim as dkimpy

        test = b"From: check@" + self.domain.encode() + b"\nSubject: check\n\ncheck\n"
        record = self.record_value.encode()

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            return record if name.decode().rstrip(".") == self.record_name else b""

        if not dkimpy.verify(self.sign(test), dnsfunc=dnsfunc):
            raise ConfigError(
                f"dkim: a message signed with the key for {self.record_name} does not verify",
                hint="make a new key with 'mailer dkim keygen'",
            )

    def dns_record(self) -> str:
        """The zone-file line to publish, in strings of at most 255 characters."""
        return dns_record(self.selector, self.domain, self.private_key)


def generate_key(bits: int = 2048) -> bytes:
    """A new RSA private key, as PKCS#1 PEM (what OpenDKIM and dkimpy read)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if bits < MIN_BITS:
        raise ConfigError(
            f"--bits {bits} is too small", hint=f"use at least {MIN_BITS}; 2048 is usual"
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_key_value(private_pem: bytes) -> str:
    """The base64 SubjectPublicKeyInfo of a private key: the record's ``p=``."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem, password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def dns_record(selector: str, domain: str, private_pem: bytes) -> str:
    """``S._domainkey.D IN TXT "v=DKIM1; k=rsa; p=..."``, the value split into
    quoted strings of at most 255 characters, as DNS needs."""
    value = f"v=DKIM1; k=rsa; p={public_key_value(private_pem)}"
    strings = " ".join(f'"{value[i : i + DNS_STRING]}"' for i in range(0, len(value), DNS_STRING))
    return f"{selector}._domainkey.{domain} IN TXT {strings}"


def parse_key(pem: bytes, *, setting: str) -> bytes:
    """A PEM RSA private key, checked and converted to PKCS#1; a ConfigError
    naming ``setting`` when it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    hint = (
        "make one with 'mailer dkim keygen --selector S --domain D', "
        "or give an unencrypted RSA key in PEM"
    )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise ConfigError(f"{setting}: the key is encrypted with a passphrase", hint=hint) from exc
    except ValueError as exc:
        raise ConfigError(f"{setting}: not a PEM private key", hint=hint) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{setting}: not an RSA key", hint=hint)
    if key.key_size < MIN_BITS:
        raise ConfigError(
            f"{setting}: a {key.key_size}-bit key is too small; receivers refuse it",
            hint=f"make a new one of at least {MIN_BITS} bits (2048 is usual)",
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def load_signer(config: DkimConfig) -> DkimSigner | None:
    """The configured signer, or None when ``[dkim] domain`` is empty."""
    if not config.domain:
        return None
    secret = config.private_key.get_secret_value()
    if secret:
        pem = parse_key(secret.encode(), setting="dkim.private_key (MAILER_DKIM__PRIVATE_KEY)")
    else:
        path = config.private_key_file
        assert path is not None, "DkimConfig requires a key when domain is set"
        setting = f"dkim.private_key_file ({path})"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{setting}: cannot read the key: {exc.strerror}",
                hint="check the path (relative to the config file) and that the mailer may read it",
            ) from exc
        pem = parse_key(data, setting=setting)
    return DkimSigner(config.domain, config.selector, pem)


def write_key(path: Path, pem: bytes) -> None:
    """Write a private key readable by its owner only; never over an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path}: already exists; not overwriting a key that may be published",
            hint="choose another --out, or move the old key away first",
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the key file: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
