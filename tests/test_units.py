import pytest

from gpupack.units import UnitError, counted, format_bytes, parse_bytes, parse_bytes_field, parse_count, parse_duration, parse_rate, parse_ratio


@pytest.mark.parametrize(
    "text, expected",
    [("16GiB", 16 * 2**30), ("309MB", 309_000_000), ("512 MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("1024B", 1024),
     ("0B", 0), ("16Gi", 16 * 2**30)],
)
def test_sizes_accept_si_and_iec_units(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text, expected", [("80%", 0.8), ("0.8", 0.8), (0.5, 0.5), ("100%", 1.0), ("0%", 0.0)])
def test_ratios_accept_percent_or_fraction(text, expected):
    assert parse_ratio(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["80", 80, "12 parsecs", "-5%", "eighty%"])
def test_ambiguous_or_bad_ratios_are_rejected(text):
    with pytest.raises(UnitError):
        parse_ratio(text)


def test_percent_above_hundred_parses_so_policy_checks_can_name_it():
    assert parse_ratio("120%") == pytest.approx(1.2)


@pytest.mark.parametrize("text, expected", [("10s", 10), ("500ms", 0.5), ("7d", 604800), ("2m", 120), (3, 3)])
def test_durations(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("value, expected", [(3, 3), ("3", 3), (" 12 ", 12)])
def test_counts_read_the_same_from_yaml_csv_and_flags(value, expected):
    assert parse_count(value) == expected


@pytest.mark.parametrize("value", [0, "0", -2, 2.5, "2.5", True, "three", ""])
def test_counts_refuse_anything_but_a_positive_whole_number(value):
    with pytest.raises(UnitError, match="is not a positive whole number"):
        parse_count(value)


@pytest.mark.parametrize("text", ["16 furlongs", "GiB", "", "-1GiB", True])
def test_bad_sizes_say_what_was_expected(text):
    with pytest.raises(UnitError):
        parse_bytes(text)


@pytest.mark.parametrize("value", [80, "80", "16", 1024, "0"])
def test_a_size_without_its_unit_is_refused_with_a_hint(value):
    with pytest.raises(UnitError, match=r"has no unit.*80GiB.*80%"):
        parse_bytes(value)


@pytest.mark.parametrize("text, hint", [("16G", "16GiB.*16GB"), ("512M", "512MiB.*512MB"), ("1k", "1KiB.*1KB")])
def test_a_lone_si_letter_is_refused_rather_than_guessed(text, hint):
    with pytest.raises(UnitError, match=f"ambiguous: write {hint}"):
        parse_bytes(text)


@pytest.mark.parametrize("value, expected", [(10742000000, 10742000000), ("10742000000", 10742000000), ("309MB", 309_000_000)])
def test_a_field_named_in_bytes_reads_a_bare_whole_number_as_bytes(value, expected):
    assert parse_bytes_field(value) == expected


@pytest.mark.parametrize("value", [-1, 2.5, "16G"])
def test_a_field_named_in_bytes_still_refuses_what_is_not_bytes(value):
    with pytest.raises(UnitError):
        parse_bytes_field(value)


def test_counts_are_worded_for_people():
    assert [counted(1, "device"), counted(2, "device"), counted(1, "policy"), counted(3, "policy"), counted(0, "day")] == [
        "1 device", "2 devices", "1 policy", "3 policies", "0 days"]


def test_human_sizes_only_at_the_edge():
    assert format_bytes(16 * 2**30) == "16.0 GiB"
    assert format_bytes(512) == "512 B"


@pytest.mark.parametrize("value,expected", [("20", 20.0), (20, 20.0), ("20/s", 20.0), ("1200/m", 20.0), ("0.5/s", 0.5)])
def test_rates_are_per_second_inside(value, expected):
    assert parse_rate(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["0", "-3", "20/x", "20ms", "fast", True])
def test_bad_rates_say_what_was_expected(value):
    with pytest.raises(UnitError, match="rate"):
        parse_rate(value)
