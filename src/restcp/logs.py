"""Log output: text lines for people, JSON lines (``--log-format json``) for machines.

Events that carry structured data (one per connection in ``restcp.access``, one per health
transition in ``restcp.health``) pass it as ``extra={"fields": {...}}``; the JSON formatter
puts those fields at the top level of the line, next to time, level, logger and message.

Access lines are many (one per connection: thousands a second under load), so they are
buffered and written together, at most ``ACCESS_FLUSH_INTERVAL`` late: a write() per line
was a syscall per connection. Every other line, and any line of level WARNING or above, is
written at once, after the access lines buffered before it, so the order of lines is kept.
What is buffered is written at exit (logging.shutdown flushes every handler).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
ACCESS_LOGGER = "restcp.access"
# How late an access line may be written, and how much may wait.
ACCESS_FLUSH_INTERVAL = 0.05
ACCESS_FLUSH_BYTES = 64 * 1024
# With several processes on one stderr: one line less than PIPE_BUF (4096), a write the
# kernel never splits.
SHARED_FLUSH_BYTES = 3 * 1024


class SecondsFormatter(logging.Formatter):
    """A formatter that makes its time string once a second: strftime per line was a good
    part of the cost of an access line, and a busy node writes thousands a second."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str | None] | None = None
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        key = (int(record.created), datefmt)
        if key != self._second:
            self._second = key
            self._stamp = time.strftime(datefmt or self.default_time_format, self.converter(key[0]))
        if datefmt or not self.default_msec_format:
            return self._stamp
        return self.default_msec_format % (self._stamp, record.msecs)


class JsonFormatter(SecondsFormatter):
    """One JSON object per line: time (UTC), level, logger, message, the worker's number,
    and the record's structured fields."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        # The "Z" the time carries promises UTC, wherever the formatter is built.
        self.converter = time.gmtime
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # An event's data never relabels the record it rides on.
            for key, value in fields.items():
                line.setdefault(key, value)
        if self.worker is not None:
            line["worker"] = self.worker
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class BufferedAccessHandler(logging.StreamHandler[TextIO]):
    """A stream handler that holds access lines back for one write (see the module doc).

    Lines are formatted when logged, so a buffered line says what it would have said. A
    daemon thread, started with the first line that waits, writes what waits after
    ACCESS_FLUSH_INTERVAL; emit() and flush() run under the handler's lock."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        self._size = 0
        # Bytes of access lines that may wait; a process sharing its stderr with others
        # (--workers) keeps each write under PIPE_BUF so that lines never interleave.
        self.flush_bytes = ACCESS_FLUSH_BYTES
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._closed = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._waiting.append(line)
        if record.name == ACCESS_LOGGER and record.levelno < logging.WARNING:
            self._size += len(line)
            if self._size < self.flush_bytes:
                if len(self._waiting) == 1:
                    self._wake_flusher()
                return
        self._write(record)

    def _write(self, record: logging.LogRecord | None = None) -> None:
        if not self._waiting:
            return
        text = "".join(self._waiting)
        self._waiting.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            if record is not None:
                self.handleError(record)

    def _wake_flusher(self) -> None:
        self._wake.set()
        # A forked child has the handler but not its thread: it starts its own.
        if (self._flusher is None or not self._flusher.is_alive()) and not self._closed:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="restcp-log-flush", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            if not self._closed:
                time.sleep(ACCESS_FLUSH_INTERVAL)
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # made by createLock() in __init__
            self._write()
        super().flush()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._wake.set()
        super().close()


_access_logger = logging.getLogger(ACCESS_LOGGER)
_START = time.time()  # a record's relativeCreated counts from here
# What every access line's record holds besides its message, fields and time: no thread,
# process or place in the source (no line of restcp shows them; see ``configure``).
_ACCESS_RECORD = {
    **vars(logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "", (), None)),
    "thread": None,
    "threadName": None,
    "process": None,
    "processName": None,
}


def access(msg: str, args: tuple[object, ...], fields: dict[str, Any]) -> None:
    """One access line: what ``getLogger(ACCESS_LOGGER).info(msg, *args, extra={"fields":
    fields})`` logs. The record is filled from a template rather than made by Logger.info
    (its caller, thread and process looked up, then set one by one): a busy node logs a
    line per connection, and that was a quarter of the line's cost."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    record = logging.LogRecord.__new__(logging.LogRecord)
    attrs = record.__dict__
    attrs.update(_ACCESS_RECORD)
    created = time.time()
    attrs["msg"] = msg
    attrs["args"] = args
    attrs["fields"] = fields
    attrs["created"] = created
    attrs["msecs"] = int((created - int(created)) * 1000) + 0.0
    attrs["relativeCreated"] = (created - _START) * 1000
    _access_logger.handle(record)


def configure(level: str, fmt: str, worker: int | None = None) -> None:
    """``worker``: the process's index under ``--workers N`` (0 for the main process), added
    to every line (`` worker=N`` at the end of a text line, ``"worker"`` in JSON)."""
    handler = BufferedAccessHandler(sys.stderr)
    if worker is not None:
        handler.flush_bytes = SHARED_FLUSH_BYTES
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter(worker)
    else:
        suffix = "" if worker is None else f" worker={worker}"
        formatter = SecondsFormatter(TEXT_FORMAT + suffix)
    handler.setFormatter(formatter)
    # No line of restcp shows a thread, a process or where in the source it was logged:
    # not collecting them makes each record cheaper (the logging HOWTO's "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
