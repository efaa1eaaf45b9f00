"""JSON log lines: one parseable object per record, whatever the record carries.

A log shipper splits on newlines and parses each line, so a record that spreads over two
lines, loses its core keys or is not JSON is a lost (or misattributed) event.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restcp import logs

CORE_KEYS = ("time", "level", "logger", "message")


def record(
    msg: str = "hello %s",
    args: tuple[Any, ...] = ("world",),
    level: int = logging.INFO,
    name: str = "restcp.test",
    created: float | None = None,
    **extra: Any,
) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    if created is not None:
        rec.created = created
        rec.msecs = (created - int(created)) * 1000
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def one_object(line: str) -> dict[str, Any]:
    assert "\n" not in line, line
    parsed = json.loads(line)
    assert isinstance(parsed, dict), line
    return parsed


def test_core_keys_come_first_with_their_values() -> None:
    line = one_object(logs.JsonFormatter().format(record(level=logging.WARNING)))
    assert list(line)[:4] == list(CORE_KEYS)
    assert line["level"] == "warning"
    assert line["logger"] == "restcp.test"
    assert line["message"] == "hello world"


def test_time_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The "Z" suffix promises UTC; a formatter built outside configure() must keep it too.
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        created = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
        line = one_object(logs.JsonFormatter().format(record(created=created)))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert line["time"] == "2023-11-14T22:13:20.250Z"


def test_fields_go_to_the_top_level() -> None:
    fields = {"event": "connection", "app": "a", "route": 1, "bytes_up": 5, "backend": None}
    line = one_object(logs.JsonFormatter().format(record(fields=fields)))
    for key, value in fields.items():
        assert line[key] == value


def test_fields_cannot_overwrite_the_core_keys() -> None:
    # An event whose data happens to use "message" or "level" must not relabel the record.
    fields = {"time": "x", "level": "debug", "logger": "evil", "message": "forged", "ok": 1}
    line = one_object(logs.JsonFormatter().format(record(level=logging.ERROR, fields=fields)))
    assert line["level"] == "error"
    assert line["logger"] == "restcp.test"
    assert line["message"] == "hello world"
    assert line["time"] != "x"
    assert line["ok"] == 1


def test_fields_that_are_not_a_dict_are_ignored() -> None:
    line = one_object(logs.JsonFormatter().format(record(fields=["not", "a", "dict"])))
    assert set(line) == set(CORE_KEYS)


@pytest.mark.parametrize(
    "message",
    [
        "two\nlines",
        "carriage\rreturn",
        'quote " and backslash \\',
        "unicode \u2028 separator and é ✓",
        "\x00 control \x1b[31m",
    ],
)
def test_any_message_stays_one_line(message: str) -> None:
    formatted = logs.JsonFormatter().format(record("%s", (message,)))
    assert formatted.isascii()  # U+2028 splits lines in some readers: escaped, like "\n"
    assert len(formatted.splitlines()) == 1
    assert one_object(formatted)["message"] == message


def test_values_json_cannot_encode_are_written_as_text() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    line = one_object(logs.JsonFormatter().format(record(fields={"thing": Opaque()})))
    assert line["thing"] == "opaque!"


def test_an_exception_is_one_key_on_the_same_line() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        rec = record(exc_info=sys.exc_info())
    formatted = logs.JsonFormatter().format(rec)
    line = one_object(formatted)
    assert "Traceback" in line["exception"]
    assert "RuntimeError: boom" in line["exception"]


def test_stack_info_is_kept() -> None:
    rec = record(stack_info="Stack (most recent call last):\n  here")
    line = one_object(logs.JsonFormatter().format(rec))
    assert "here" in line["stack"]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """configure() replaces the root handlers; pytest's own must come back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_json_writes_json_lines_to_stderr(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", "json")
    logging.getLogger("restcp.x").info("visible %d", 1, extra={"fields": {"event": "e"}})
    logging.getLogger("restcp.x").debug("below the level")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = one_object(lines[0])
    assert (line["message"], line["event"], line["level"]) == ("visible 1", "e", "info")
    assert line["time"].endswith("Z")


def test_configure_text_is_plain_lines(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("debug", "text")
    logging.getLogger("restcp.x").debug("plain %s", "words", extra={"fields": {"event": "e"}})
    err = capsys.readouterr().err.strip()
    assert err.endswith(" DEBUG restcp.x plain words"), err
    assert not err.startswith("{")


def test_configure_replaces_handlers_instead_of_stacking(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", "text")
    logs.configure("info", "json")
    logging.getLogger("restcp.x").info("once")
    assert len(capsys.readouterr().err.splitlines()) == 1


def open_stderr(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What configure()'s handler writes to, set in the test's body (pytest sets its own
    sys.stderr after the fixtures): a stream that stays open for the flusher thread that
    access lines start, which may write after the test (capsys's would be closed)."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_writes_the_line_logger_info_writes(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """logs.access fills its record from a template instead of Logger.info: the same line
    comes out, in either format, but for the time it was made."""
    stderr = open_stderr(monkeypatch)
    logs.configure("info", fmt)
    fields = {"event": "connection", "bytes_up": 3, "end": "closed"}
    args = ("a", 1, 2.5)
    logging.getLogger(logs.ACCESS_LOGGER).info("app=%s route=%d duration=%.3f", *args,
                                               extra={"fields": fields})  # fmt: skip
    logs.access("app=%s route=%d duration=%.3f", args, fields)
    root_logger.handlers[0].flush()  # the access lines are buffered: written now
    by_info, by_access = stderr.getvalue().splitlines()
    if fmt == "json":
        info, access = one_object(by_info), one_object(by_access)
        assert info.pop("time")[:16] == access.pop("time")[:16]  # to the minute
        assert info == access
        assert access["message"] == "app=a route=1 duration=2.500"
        assert access["end"] == "closed"
    else:
        # "2026-12-06 20:40:01,123 INFO restcp.access app=a ...": the same after the time.
        assert by_info.split(" ", 2)[2] == by_access.split(" ", 2)[2]
        assert by_access.endswith(" INFO restcp.access app=a route=1 duration=2.500")


def test_access_is_filtered_by_the_logger_level(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = open_stderr(monkeypatch)
    logs.configure("warning", "text")
    logs.access("app=%s", ("a",), {})
    root_logger.handlers[0].flush()
    assert stderr.getvalue() == ""


def test_access_lines_are_batched_and_kept_in_order() -> None:
    """Access lines wait for one write; a line of another logger writes them first, then
    itself; close() writes whatever still waits."""
    import io

    stream = io.StringIO()
    handler = logs.BufferedAccessHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    access = logging.LogRecord("restcp.access", logging.INFO, __file__, 1, "a%d", (1,), None)
    handler.handle(access)
    handler.handle(logging.LogRecord("restcp.access", logging.INFO, __file__, 1, "a2", (), None))
    assert stream.getvalue() == ""  # held back
    handler.handle(logging.LogRecord("restcp.node", logging.INFO, __file__, 1, "ready", (), None))
    assert stream.getvalue() == "restcp.access a1\nrestcp.access a2\nrestcp.node ready\n"
    handler.handle(logging.LogRecord("restcp.access", logging.INFO, __file__, 1, "a3", (), None))
    handler.close()
    assert stream.getvalue().endswith("restcp.node ready\nrestcp.access a3\n")


def test_access_lines_are_written_within_the_flush_interval() -> None:
    import io

    stream = io.StringIO()
    handler = logs.BufferedAccessHandler(stream)
    try:
        handler.handle(
            logging.LogRecord("restcp.access", logging.INFO, __file__, 1, "late", (), None)
        )
        deadline = time.monotonic() + 10
        while "late" not in stream.getvalue():  # written by the handler's own thread
            assert time.monotonic() < deadline, "never written"
            time.sleep(0.005)
    finally:
        handler.close()


@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1, max_size=20))
def test_time_made_once_a_second_is_the_time_of_each_line(times: list[float]) -> None:
    """The cached time string of SecondsFormatter is what logging's own formatter writes,
    for any sequence of record times, back and forth across seconds."""
    ours = logs.SecondsFormatter(logs.TEXT_FORMAT)
    plain = logging.Formatter(logs.TEXT_FORMAT)
    json_formatter = logs.JsonFormatter()
    for created in times:
        rec = record(created=created)
        assert ours.format(rec) == plain.format(rec)
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        expected += f".{int(rec.msecs):03d}Z"
        assert one_object(json_formatter.format(rec))["time"] == expected
