"""DKIM commands: make a signing key and say which DNS record publishes it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mailer.cli.app import out
from mailer.dkim import MIN_BITS
from mailer.errors import ConfigError

dkim_app = typer.Typer(
    name="dkim",
    help="DKIM signing: make a key and show the DNS record to publish.",
    no_args_is_help=True,
)


def _name(value: str, option: str) -> str:
    from mailer.config import dns_name

    try:
        return dns_name(value)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from exc


@dkim_app.command("keygen")
def keygen(
    selector: Annotated[
        str, typer.Option(help="The selector, e.g. 'digest2026'; the key's DNS name starts so.")
    ],
    domain: Annotated[str, typer.Option(help="The signing domain (d=), e.g. example.org.")],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the private key [default: SELECTOR.DOMAIN.pem]."
        ),
    ] = None,
    bits: Annotated[int, typer.Option(min=MIN_BITS, max=8192, help="RSA key size.")] = 2048,
) -> None:
    """Write a new RSA private key (mode 0600, never over an existing file)
    and print the DNS TXT record to publish for it."""
    from mailer.dkim import dns_record, generate_key, write_key

    selector = _name(selector, "--selector")
    domain = _name(domain, "--domain")
    if not selector or not domain:
        raise ConfigError("--selector and --domain must not be empty")
    path = out_file or Path(f"{selector}.{domain}.pem")
    pem = generate_key(bits)
    write_key(path, pem)
    out.print(f"wrote a {bits}-bit RSA key to {path} (mode 0600)", soft_wrap=True)
    out.print("publish this DNS record:", soft_wrap=True)
    out.print(dns_record(selector, domain, pem), markup=False, soft_wrap=True)
    out.print("then configure:", soft_wrap=True)
    out.print(
        f'[dkim]\ndomain = "{domain}"\nselector = "{selector}"\nprivate_key_file = "{path}"',
        markup=False,
        soft_wrap=True,
    )
