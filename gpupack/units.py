"""Parsing and formatting of the quantities users type: sizes, ratios, durations, rates.

Everything inside gpupack is in base units (bytes, seconds, ratios 0-1); these helpers are the
only place where ``16GiB``, ``80%`` or ``10s`` become numbers and back again.
"""

from __future__ import annotations

import re

# One convention: SI with a B (10^3), IEC with i (2^10). A lone K, M, G or T is refused rather than
# guessed: "16G" is 16 GiB to whoever read it off a GPU's box and 16×10^9 to Kubernetes.
_AMBIGUOUS_SUFFIXES = {"k", "m", "g", "t"}
_BYTE_SUFFIXES = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
_DURATION_SUFFIXES = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-z%]*)\s*$")


class UnitError(ValueError):
    """A quantity that cannot be read; the message says what was expected."""


def _split(text: str) -> tuple[float, str]:
    match = _QUANTITY.match(text)
    if not match:
        raise UnitError(f"{text!r} is not a number with an optional unit")
    mantissa, exponent, suffix = match.groups()
    value = float(mantissa) * (10 ** int(exponent) if exponent else 1)
    return value, suffix


def _quantity(value: str | int | float, what: str) -> tuple[float, str | None]:
    """A YAML number as it is (its unit None), text split into number and unit; booleans refused,
    since YAML reads ``yes`` and ``on`` as them."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not {what}")
    if isinstance(value, (int, float)):
        return float(value), None
    return _split(value)


def parse_bytes(value: str | int | float) -> int:
    """``16GiB`` -> 17179869184. A size needs its unit: a bare ``80`` is refused, since a user who
    typed it meant 80% or 80 GiB, never 80 bytes."""
    number, suffix = _quantity(value, "a size")
    if not suffix:
        raise UnitError(f"{value!r} has no unit: a size needs one (write 80GiB or 512MiB; "
                        "a share of the device is a ratio, like 80%)")
    return _bytes_with_unit(value, number, suffix)


def parse_bytes_field(value: str | int | float) -> int:
    """A size in a field whose name says bytes (``peak_gpu_memory_bytes``): a bare whole number is
    bytes, as the profiler writes it; text with a unit reads as :func:`parse_bytes` does."""
    number, suffix = _quantity(value, "a size")
    if suffix is None or suffix == "":
        if number < 0:
            raise UnitError(f"size {value!r} is negative")
        if number != int(number):
            raise UnitError(f"{value!r} is not a whole number of bytes")
        return int(value) if isinstance(value, int) else int(number)
    return _bytes_with_unit(value, number, suffix)


def _bytes_with_unit(value: str | int | float, number: float, suffix: str) -> int:
    if suffix.lower() in _AMBIGUOUS_SUFFIXES:
        raise UnitError(f"{value!r} is ambiguous: write {_trimmed(number)}{suffix.upper()}iB "
                        f"(2^{_IEC_POWER[suffix.lower()]}) or {_trimmed(number)}{suffix.upper()}B "
                        f"(10^{_SI_POWER[suffix.lower()]})")
    factor = _BYTE_SUFFIXES.get(suffix.lower())
    if factor is None:
        raise UnitError(f"{value!r} has unknown size unit {suffix!r} (use B, KB, MB, GB, KiB, MiB, GiB, ...)")
    return int(round(number * factor))


_IEC_POWER = {"k": 10, "m": 20, "g": 30, "t": 40}
_SI_POWER = {"k": 3, "m": 6, "g": 9, "t": 12}


def _trimmed(number: float) -> str:
    return f"{number:g}"


def parse_count(value: str | int) -> int:
    """``3`` or ``"3"`` -> 3: flags, environment and CSV give text, YAML gives numbers; 0, 2.5 and
    ``true`` are refused, whichever way they came."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isdigit() or int(text) < 1:
        raise UnitError(f"{value!r} is not a positive whole number")
    return int(text)


def parse_rate(value: str | int | float) -> float:
    """``20``, ``"20/s"`` or ``"1200/m"`` -> 20.0 per second; zero and negatives are refused."""
    text = str(value).strip()
    amount, slash, unit = text.partition("/")
    factor = _DURATION_SUFFIXES.get(unit.strip().lower() if slash else "s")
    match = _QUANTITY.match(amount)
    if factor is None or match is None or match.group(3) or isinstance(value, bool):
        raise UnitError(f"{value!r} is not a rate (like 20, 20/s or 1200/m)")
    number = float(match.group(1)) * 10 ** int(match.group(2) or 0) / factor
    if number <= 0:
        raise UnitError(f"{value!r} is not a positive rate")
    return number


def parse_ratio(value: str | int | float) -> float:
    """``80%`` or ``0.8`` -> 0.8. Plain numbers above 1 are rejected: ``80`` is ambiguous."""
    number, suffix = _quantity(value, "a ratio")
    if suffix == "%":
        ratio = number / 100.0
    elif not suffix:
        ratio = number
    else:
        raise UnitError(f"{value!r} is not a ratio (write 80% or 0.8)")
    if ratio < 0:
        raise UnitError(f"ratio {value!r} is negative")
    if ratio > 1 and not (isinstance(value, str) and value.strip().endswith("%")):
        raise UnitError(f"ratio {value!r} is above 1 (write 80% or 0.8)")
    return ratio


def parse_duration(value: str | int | float) -> float:
    """``10s``, ``500ms``, ``7d`` -> seconds. Bare numbers are seconds."""
    number, suffix = _quantity(value, "a duration")
    if not suffix:
        seconds = number
    elif suffix.lower() in _DURATION_SUFFIXES:
        seconds = number * _DURATION_SUFFIXES[suffix.lower()]
    else:
        raise UnitError(f"{value!r} has unknown duration unit {suffix!r} (use ms, s, m, h, d, w)")
    if seconds < 0:
        raise UnitError(f"duration {value!r} is negative")
    return seconds


def format_bytes(value: float) -> str:
    """Human-readable IEC size for tables and logs (the edge, never storage)."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{int(value)} B"


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 device``, ``2 devices``, ``1 policy``, ``3 policies``: every count a person reads."""
    if count == 1:
        return f"{count} {singular}"
    if plural is None:
        plural = singular[:-1] + "ies" if singular.endswith("y") and singular[-2:-1] not in "aeiou" else singular + "s"
    return f"{count} {plural}"


def format_mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def format_percent(ratio: float) -> str:
    return f"{ratio * 100:.0f}%"
