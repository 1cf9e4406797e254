"""Kubernetes quantities are parsed exactly, and everything else is refused with the text named."""

from decimal import Decimal

import pytest

from core.quantity import parse_quantity, to_bytes, to_count, to_millicores


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", Decimal(0)),
        ("16", Decimal(16)),
        ("1Ki", Decimal(1024)),
        ("32Gi", Decimal(32 * 1024**3)),
        ("1Ei", Decimal(1024**6)),
        ("1k", Decimal(1000)),
        ("2M", Decimal(2_000_000)),
        ("1E", Decimal(10**18)),  # a lone E is exa ...
        ("1E3", Decimal(1000)),  # ... but E followed by digits is an exponent
        ("1e3", Decimal(1000)),
        ("12E6", Decimal(12_000_000)),
        ("1.5e-3", Decimal("0.0015")),
        ("250m", Decimal("0.25")),
        ("5n", Decimal("0.000000005")),
        ("3u", Decimal("0.000003")),
        ("0.1Gi", Decimal("107374182.4")),  # exact: a float would give 107374182.40000001
        ("1.5Gi", Decimal(1536 * 1024**2)),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("+7", Decimal(7)),
        ("-2Ki", Decimal(-2048)),
        # 33 significant digits: the kubernetes client rounds this to 28
        ("123456789012345Ei", Decimal(123456789012345 * 1024**6)),
        (8, Decimal(8)),
        (0.5, Decimal("0.5")),
    ],
)
def test_quantities_parse_exactly(text: object, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "1ki",
        "1KiB",
        "1e",
        "1e3Mi",
        "NaN",
        "Infinity",
        "1_000",
        "0x10",
        "--1",
        "1.2.3",
        "m",
        "1Gb",
    ],
)
def test_malformed_quantities_name_the_offending_text(text: str) -> None:
    with pytest.raises(ValueError, match="quantit") as error:
        parse_quantity(text)
    assert repr(text) in str(error.value)


def test_non_quantities_are_refused() -> None:
    for value in (True, None, [1], Decimal("NaN")):
        with pytest.raises(ValueError):
            parse_quantity(value)  # type: ignore[arg-type]


def test_absurd_exponents_and_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="exponent"):
        parse_quantity("1e999999")
    with pytest.raises(ValueError, match="too long"):
        parse_quantity("1" * 500)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1Ki", 1024), ("16093364Ki", 16093364 * 1024), ("129m", 1), ("1.5", 2), ("0", 0), ("1e3", 1000)],
)
def test_bytes_round_up_like_kubernetes(text: str, expected: int) -> None:
    assert to_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2", 2000), ("250m", 250), ("3920m", 3920), ("0.5", 500), ("0.1m", 1), ("1e-3", 1), (4, 4000)],
)
def test_cpu_in_millicores(text: object, expected: int) -> None:
    assert to_millicores(text) == expected


def test_device_counts_must_be_whole() -> None:
    assert to_count("8") == 8
    assert to_count("1e1") == 10
    for text in ("1.5", "-1", "500m"):
        with pytest.raises(ValueError, match="whole"):
            to_count(text)
