"""SMS encoding and segmentation (3GPP TS 23.038 GSM 7-bit default alphabet, UCS-2 fallback).

A message that fits the GSM-7 alphabet costs one septet per basic character and two per extension
character (``€ [ ] { } \\ ^ ~ |`` and form feed); it fits one SMS up to 160 septets, and concatenated
parts carry 153 septets each (the user data header takes the rest). One character outside the alphabet
switches the whole message to UCS-2: 70 UTF-16 code units in one SMS, 67 per concatenated part. Parts
never split an escape pair or a surrogate pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = "\f^{}\\[~]|€"
_BASIC = frozenset(GSM7_BASIC)
_EXTENSION = frozenset(GSM7_EXTENSION)

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


@dataclass(frozen=True)
class SmsSegments:
    """How a text goes out: its encoding, its units (septets or UTF-16 code units) and its parts."""

    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    parts: tuple[str, ...]

    @property
    def count(self) -> int:
        """Number of SMS billed."""
        return len(self.parts)


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` is in the GSM-7 basic or extension table."""
    return all(ch in _BASIC or ch in _EXTENSION for ch in text)


def _gsm_cost(ch: str) -> int:
    return 2 if ch in _EXTENSION else 1


def _ucs2_cost(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def segment(text: str) -> SmsSegments:
    """Split ``text`` into SMS parts the way a handset or Twilio would."""
    if is_gsm7(text):
        encoding: Literal["GSM-7", "UCS-2"] = "GSM-7"
        cost, single, part = _gsm_cost, GSM7_SINGLE, GSM7_PART
    else:
        encoding, cost, single, part = "UCS-2", _ucs2_cost, UCS2_SINGLE, UCS2_PART
    units = sum(cost(ch) for ch in text)
    if units <= single:
        return SmsSegments(encoding, units, (text,) if text else ())
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for ch in text:
        c = cost(ch)
        # A character never straddles two parts: its escape or surrogate pair moves whole.
        if used + c > part:
            parts.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += c
    if current:
        parts.append("".join(current))
    return SmsSegments(encoding, units, tuple(parts))


#: Typographic characters that CLDR formatting and templates produce, with GSM-7 stand-ins: one of them
#: would otherwise push a whole message into UCS-2 and more than double its cost.
_GSM_SUBSTITUTES = {
    "\u00a0": " ",  # no-break space (de currency, en dates)
    "\u202f": " ",  # narrow no-break space (CLDR before AM/PM, fr/de grouping)
    "\u2009": " ",  # thin space
    "\u2007": " ",
    "\u2212": "-",  # minus sign
    "\u2013": "-",
    "\u2014": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u2026": "...",
    "\u2192": "->",
    "\u2191": "^",
    "\u2193": "v",
}


def to_gsm_friendly(text: str) -> str:
    """Replace typographic characters that have a plain GSM-7 equivalent; other characters stay (and
    then correctly select UCS-2)."""
    return "".join(_GSM_SUBSTITUTES.get(ch, ch) for ch in text)
