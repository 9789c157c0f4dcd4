from pathlib import Path

import pytest

from gpupack.config import Setting, load_config_file, resolve_settings
from gpupack.errors import InputError
from gpupack.units import parse_bytes, parse_duration

SETTINGS = [
    Setting("listen", str, "0.0.0.0:9478"),
    Setting("sample_hz", float, 5.0),
    Setting("peak_window", parse_duration, 7 * 86400.0),
    Setting("memory_budget", parse_bytes, None),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gpupack.yaml"
    path.write_text(text)
    return path


def test_flags_beat_environment_beats_file_beats_defaults(tmp_path):
    config = load_config_file(write(tmp_path, "exporter:\n  sample_hz: 2\n  listen: 127.0.0.1:1\n  peak_window: 1h\n"))
    values = resolve_settings(
        "exporter", SETTINGS, config, {"GPUPACK_EXPORTER_SAMPLE_HZ": "3", "GPUPACK_EXPORTER_LISTEN": "x:2"},
        {"listen": "y:3", "sample_hz": None},
    )
    assert values == {"listen": "y:3", "sample_hz": 3.0, "peak_window": 3600.0, "memory_budget": None}


def test_bad_value_in_file_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "exporter:\n  listen: a:1\n  memory_budget: 3 parsecs\n")
    with pytest.raises(InputError) as error:
        resolve_settings("exporter", SETTINGS, load_config_file(path), {}, {})
    assert str(error.value).startswith(f"{path}:3: exporter.memory_budget: ")


def test_unknown_setting_is_an_error_not_ignored(tmp_path):
    path = write(tmp_path, "exporter:\n  sample_hertz: 5\n")
    with pytest.raises(InputError, match=r":2: exporter.sample_hertz: unknown setting"):
        resolve_settings("exporter", SETTINGS, load_config_file(path), {}, {})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(InputError, match="GPUPACK_EXPORTER_PEAK_WINDOW"):
        resolve_settings("exporter", SETTINGS, None, {"GPUPACK_EXPORTER_PEAK_WINDOW": "soon"}, {})


def test_broken_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "exporter:\n  listen: [oops\n")
    with pytest.raises(InputError, match=rf"^{path}:\d+: invalid YAML"):
        load_config_file(path)


def test_listen_addresses_accept_ipv6_and_an_empty_host_and_name_the_example():
    from gpupack.config import parse_listen

    assert parse_listen("[::1]:9479", 9479) == ("::1", 9479)
    assert parse_listen(":9478", 9478) == ("0.0.0.0", 9478)
    with pytest.raises(ValueError, match=r"'localhost' is not HOST:PORT \(e.g. 0.0.0.0:9479\)"):
        parse_listen("localhost", 9479)


def test_rules_engine_listens_on_9479_by_default():
    """The default used to stay an unparsed string, and `rules run` crashed unpacking it."""
    from gpupack.rules.cli import SETTINGS

    assert resolve_settings("rules", SETTINGS, None, {}, {})["listen"] == ("0.0.0.0", 9479)


@pytest.mark.parametrize("value", ["a, b,,c ", ["a", " b", "", "c"], ("a", "b", "c")])
def test_a_list_setting_reads_alike_from_a_flag_and_from_a_yaml_list(value):
    from gpupack.config import split_list

    assert split_list(value) == ("a", "b", "c")


def test_a_yaml_scalar_is_a_list_of_one_and_a_mapping_is_no_list():
    from gpupack.config import split_list

    assert split_list(4) == ("4",)
    assert split_list("") == ()
    with pytest.raises(ValueError, match="must be a list"):
        split_list({"a": 1})


@pytest.mark.parametrize("text", ["host:0", "host:http", "host:", "host:70000"])
def test_a_listen_address_without_a_usable_port_is_refused(text):
    from gpupack.config import parse_listen

    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_listen(text, 9478)
