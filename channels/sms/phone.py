"""Phone-number rules shared by the SMS and voice channels."""

from __future__ import annotations

import re
from collections.abc import Sequence

E164 = re.compile(r"^\+[1-9]\d{7,14}$")
# What Twilio puts in From for withheld caller ids ("+266696687" spells ANONYMOUS).
_WITHHELD = {"+266696687", "+7378742833", "+2562533", "+86282452253", "anonymous", "restricted", "unknown"}


def is_e164(number: str | None) -> bool:
    return bool(number) and bool(E164.match(number or ""))


def is_withheld(number: str | None) -> bool:
    return not number or number.strip().lower() in _WITHHELD


def can_text(number: str | None, prefixes: Sequence[str] = ()) -> bool:
    """Whether an SMS to ``number`` is worth trying: E.164, not withheld, an allowed prefix.

    Only a shape check: telling a mobile from a landline needs Twilio Lookup (not used), so a
    landline in an allowed prefix gets a message Twilio will fail (error 30006) — harmless.
    """
    if not is_e164(number) or is_withheld(number):
        return False
    assert number is not None
    return not prefixes or any(number.startswith(p) for p in prefixes)
