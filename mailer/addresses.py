"""Email addresses: validated once, compared by one key.

An address is checked with email-validator (syntax only, no DNS) and kept
with its domain in IDNA form (``bücher.example`` -> ``xn--bcher-kva.example``),
so every transport and header sees an ASCII domain, and its local part as
written. A non-ASCII local part is valid: such a message needs SMTPUTF8.
Addresses are compared by :func:`address_key`, which folds case the Unicode
way in Python, since SQLite's ``lower()`` folds ASCII only.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

_MEMO_LIMIT = 65536
_normalised: dict[str, str] = {}


def normalise_address(value: str) -> str:
    """``value`` as a valid address with an ASCII domain; ValueError saying why not.
    Remembered: a pass, a reload and every listing check the same addresses,
    and validating one costs about a tenth of a millisecond."""
    found = _normalised.get(value)
    if found is None:
        found = _validated(value)
        if len(_normalised) >= _MEMO_LIMIT:
            _normalised.clear()
        _normalised[value] = found
    return found


def remember_addresses(pairs: Iterable[tuple[str, str]]) -> None:
    """Take (address as written, ``normalise_address`` of it) pairs found
    valid by an earlier load of the same configuration (mailer.config's
    cache), so a warm start validates none of them again."""
    if len(_normalised) >= _MEMO_LIMIT:
        _normalised.clear()
    _normalised.update(pairs)


def remembered_addresses() -> list[tuple[str, str]]:
    """Every (address as written, normalised) pair validated so far."""
    return list(_normalised.items())


def _validated(value: str) -> str:
    import email_validator  # on first use: the CLI's quick commands need none

    try:
        found = email_validator.validate_email(
            value, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid email address: {exc}") from exc
    return f"{found.local_part}@{found.ascii_domain}"


@lru_cache(maxsize=65536)
def address_key(value: str) -> str:
    """What two spellings of one address share: the local part casefolded, the
    domain in lower-case IDNA form. A string that is not a valid address
    (typed on the command line, or stored by an older release) is casefolded
    as it is, so it can still be found."""
    try:
        address = normalise_address(value.strip())
    except ValueError:
        return value.strip().casefold()
    local, _, domain = address.rpartition("@")
    return f"{local.casefold()}@{domain.lower()}"


def needs_smtputf8(address: str) -> bool:
    """Whether ``address`` can travel only over SMTPUTF8 (RFC 6531)."""
    return not address.isascii()
