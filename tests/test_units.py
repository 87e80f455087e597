import pytest

from ftmem.errors import InvalidInputError
from ftmem.units import format_bytes, format_count, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 2**30),
        ("24 GiB", 24 * 2**30),
        ("24GB", 24 * 10**9),
        ("81920MiB", 80 * 2**30),
        ("1.5TiB", 3 * 2**39),
        ("1048576", 2**20),  # a byte count written out (at least 1 MiB without a unit)
        ("1024B", 1024),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


# "24" without a unit is a unit forgotten (24 GB meant), not a 24-byte GPU
@pytest.mark.parametrize("bad", ["24g", "GiB", "-3GiB", "0", "24 gibibytes", "", "24", "1024"])
def test_parse_size_refuses(bad):
    with pytest.raises(InvalidInputError):
        parse_size(bad)


def test_format_bytes_binary_and_decimal_are_distinct():
    assert format_bytes(80 * 2**30) == "80.00 GiB"
    assert format_bytes(80 * 2**30, "GB") == "85.90 GB"
    assert format_bytes(512) == "512 B"


def test_format_bytes_rounding_carries_to_next_unit():
    # 1023.999 MiB must read 1.00 GiB, not "1024.00 MiB"
    assert format_bytes(2**30 - 1000) == "1.00 GiB"
    assert format_bytes(999_999_999, "GB") == "1.00 GB"


def test_format_count():
    assert format_count(6_738_415_616) == "6.74B"
    assert format_count(124_439_808) == "124.44M"
    assert format_count(999) == "999"
