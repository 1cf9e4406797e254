"""Exact parsing of Kubernetes resource quantities ("16", "500m", "32Gi", "1e3", "12E6").

The grammar is the one in apimachinery's ``resource/quantity.go``::

    <quantity>      ::= <signedNumber><suffix>
    <suffix>        ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>      ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>     ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

Values are computed as :class:`decimal.Decimal` under a local context that traps every inexact
operation, so "0.1Gi" is exactly 107374182.4 and never a rounded float.

Why not ``kubernetes.utils.quantity.parse_quantity`` (the official client, already installed)?
It is close but not exact or strict enough for an inventory that must be right:

* it multiplies under the default 28-digit decimal context, so large values (``123456789012345Ei``)
  are silently rounded;
* it hands the number part to ``Decimal()``, which also accepts ``"NaN"``, ``"Infinity"``,
  ``"1_000"`` and surrounding whitespace - none of which Kubernetes accepts;
* it accepts an exponent combined with a suffix (``"1e3Mi"``), which the grammar forbids;
* it accepts floats, which are already inexact.

The grammar is small, so a strict regular expression plus exact arithmetic is less code than
wrapping and re-validating the client's function.

The integer helpers round *up*, as Kubernetes' ``Quantity.Value()`` / ``MilliValue()`` do: a
request of "0.5" bytes occupies one byte, "0.1m" CPU one millicore.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext

__all__ = ["parse_quantity", "to_bytes", "to_count", "to_millicores"]

# Longest text we accept: apimachinery caps quantities well below this in practice, and a cap
# keeps a hostile value from costing arbitrary time.
_MAX_LENGTH = 100
# Exponents beyond this cannot describe any real resource; refusing them keeps Decimal exact.
_MAX_EXPONENT = 200

_QUANTITY_RE = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    # The exponent alternative comes first so "1E3" is an exponent while "1E" is exa.
    r"(?:(?P<exponent>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

# Enough digits for the longest accepted text times 1024**6; Inexact is trapped regardless.
_EXACT = Context(
    prec=_MAX_LENGTH + 40, Emax=10_000, Emin=-10_000, traps=[Inexact, InvalidOperation, Overflow]
)


def parse_quantity(value: str | int | float | Decimal) -> Decimal:
    """Return the exact value of a Kubernetes quantity.

    Accepts the string forms above, ints and Decimals (YAML turns an unquoted ``cpu: 16`` into an
    int) and floats via their shortest repr (YAML's ``cpu: 0.5``).
    Raises ValueError naming the offending text when it is not a quantity.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is not a quantity
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a quantity: {value!r}")
        return value
    if isinstance(value, float):
        value = repr(value)
    if not isinstance(value, str):
        raise ValueError(f"not a quantity: {value!r}")
    if len(value) > _MAX_LENGTH:
        raise ValueError(f"quantity too long ({len(value)} characters): {value[:20]!r}...")
    match = _QUANTITY_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    number = Decimal(match["number"])
    exponent = match["exponent"]
    suffix = match["suffix"]
    try:
        with localcontext(_EXACT):
            if exponent is not None:
                power = int(exponent[1:])
                if abs(power) > _MAX_EXPONENT:
                    raise ValueError(f"quantity exponent out of range: {value!r}")
                return number.scaleb(power)
            if suffix is None:
                return number
            if suffix in _BINARY:
                return number * (1024 ** _BINARY[suffix])
            return number.scaleb(_DECIMAL[suffix])
    except (Inexact, Overflow, InvalidOperation) as exc:
        raise ValueError(f"quantity cannot be represented exactly: {value!r}") from exc


def _ceil_int(amount: Decimal) -> int:
    integral = int(amount)  # truncates toward zero
    return integral + 1 if amount > integral else integral


def to_bytes(value: str | int | float | Decimal) -> int:
    """Bytes as an int, rounded up (``Quantity.Value()`` semantics): "1Ki" -> 1024."""
    if isinstance(value, str) and value.isdigit():  # the common "16Gi"-free fast path
        return int(value)
    return _ceil_int(parse_quantity(value))


def to_millicores(value: str | int | float | Decimal) -> int:
    """CPU in millicores, rounded up (``Quantity.MilliValue()``): "2" -> 2000, "250m" -> 250."""
    if isinstance(value, str) and value.isdigit():
        return int(value) * 1000
    return _ceil_int(parse_quantity(value) * 1000)


def to_count(value: str | int | float | Decimal) -> int:
    """A whole-device count (extended resources such as ``nvidia.com/gpu``).

    Kubernetes only allows integers for extended resources; anything fractional or negative is
    reported as an error rather than rounded, because it means the object is not what we think.
    """
    if isinstance(value, str) and value.isdigit():
        return int(value)
    amount = parse_quantity(value)
    if amount < 0 or amount != amount.to_integral_value():
        raise ValueError(f"not a whole, non-negative device count: {value!r}")
    return int(amount)
