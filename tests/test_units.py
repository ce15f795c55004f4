"""Durations and sizes as written in config files (gateway._config.units)."""

from __future__ import annotations

import pytest

from gateway._config.units import format_duration, parse_duration_s, parse_size_bytes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("0.5m", 30.0),
        (".5s", 0.5),
    ],
)
def test_duration_with_a_unit_parses_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2", "250", "1.5", "0"])
def test_duration_without_a_unit_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="with a unit"):
        parse_duration_s(text)


@pytest.mark.parametrize("text", ["0s", "0ms", "0.0s", "0m"])
def test_zero_duration_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration_s(text)


@pytest.mark.parametrize("text", ["-1s", "-250ms", "-0.5m"])
def test_negative_duration_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


@pytest.mark.parametrize("text", ["", "s", "ms", "2 sec", "2S", "1d", "1e3ms", "inf s", "nan s"])
def test_malformed_or_unknown_unit_duration_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_overflowing_duration_is_rejected_not_infinite() -> None:
    with pytest.raises(ValueError):
        parse_duration_s("9" * 400 + "s")


def test_duration_error_message_shows_examples() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration_s("2")
    assert "250ms" in str(info.value)
    assert "'2'" in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (2.0, "2s"), (1.5, "1.5s"), (60.0, "60s")]
)
def test_format_duration_is_readable(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["250ms", "2s", "1.5s", "0.1s"])
def test_format_duration_round_trips_through_parse(text: str) -> None:
    assert parse_duration_s(format_duration(parse_duration_s(text))) == pytest.approx(
        parse_duration_s(text)
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("1B", 1),
        ("1KB", 1000),
        ("512KiB", 512 * 1024),
        ("1MB", 1000**2),
        ("16MiB", 16 * 1024**2),
        ("2GB", 2 * 1000**3),
        ("1GiB", 1024**3),
        ("1.5KiB", 1536),
    ],
)
def test_size_parses_to_bytes(text: str, size: int) -> None:
    assert parse_size_bytes(text) == size


@pytest.mark.parametrize("text", ["0", "0KiB", "0.1", "0.0MB"])
def test_size_of_zero_bytes_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_size_bytes(text)


@pytest.mark.parametrize("text", ["", "-1", "1TB", "1kb", "16 MeB", "KiB", "1e6"])
def test_malformed_size_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size_bytes(text)
