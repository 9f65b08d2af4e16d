"""workerhost.gearman.admin: gearmand's text admin protocol, and names that try to forge its lines.

A canned server checks the parsers line by line; a real gearmand shows that a job whose
function name holds tabs and newlines cannot make `status` report invented figures.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from workerhost.gearman import admin as gearadmin
from workerhost.sandbox.options import MEMORY_QUEUE

SUBMIT_JOB_BG = 18


@contextmanager
def canned(answer: bytes) -> Iterator[int]:
    """A server on a free loopback port answering every command with answer; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_status_reads_well_formed_lines() -> None:
    with canned(b"resize\t3\t1\t2\nmail\t0\t0\t1\n.\n") as port:
        assert gearadmin.status("127.0.0.1", port) == {
            "resize": gearadmin.FunctionStatus("resize", 3, 1, 2),
            "mail": gearadmin.FunctionStatus("mail", 0, 0, 1),
        }


def test_status_leaves_out_a_function_listed_twice(caplog: pytest.LogCaptureFixture) -> None:
    # What gearmand prints for a real "ping" and a job named "ping\t777\t0\t0\nzzz".
    answer = b"ping\t777\t0\t0\nzzz\t1\t0\t0\nping\t3\t0\t2\n.\n"
    with canned(answer) as port, caplog.at_level(logging.WARNING, "workerhost.gearadmin"):
        found = gearadmin.status("127.0.0.1", port)
    assert "ping" not in found
    assert "'ping' listed twice in 'status' and left out" in caplog.text


@pytest.mark.parametrize("line", [
    b"three\t1\t0",                 # 3 fields
    b"five\t1\t0\t0\t0",            # 5 fields
    b"count\t1\tx\t0",              # not a number
    b"sign\t+1\t0\t0",              # int() would take it
    b"digit\t\xd9\xa3\t0\t0",       # ARABIC-INDIC DIGIT THREE: int() would take it too
    b"two words\t1\t0\t0",          # whitespace in the name
    b"file\x1csep\t1\t0\t0",        # str.splitlines() would cut here
    b"\t1\t0\t0",                   # no name
])
def test_status_skips_and_reports_misshapen_lines(line: bytes,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with canned(line + b"\nok\t5\t0\t1\n.\n") as port, \
            caplog.at_level(logging.WARNING, "workerhost.gearadmin"):
        found = gearadmin.status("127.0.0.1", port)
    assert found == {"ok": gearadmin.FunctionStatus("ok", 5, 0, 1)}
    assert "1 'status' line(s) not of the documented shape left out" in caplog.text


def test_workers_reads_lines_and_drops_a_repeated_descriptor(
        caplog: pytest.LogCaptureFixture) -> None:
    answer = (b"30 ::1 - :\n"
              b"31 127.0.0.1 host-1-42 : resize mail\n"
              b"32 127.0.0.1 - : a\n"
              b"32 127.0.0.1 forged : a\n"
              b"33 127.0.0.1 x :resize\n"   # no space after the colon: not gearmand's shape
              b".\n")
    with canned(answer) as port, caplog.at_level(logging.WARNING, "workerhost.gearadmin"):
        found = gearadmin.workers("127.0.0.1", port)
    assert found == [gearadmin.Connection("::1", "-", ()),
                     gearadmin.Connection("127.0.0.1", "host-1-42", ("resize", "mail"))]
    assert "'fd 32' listed twice in 'workers'" in caplog.text
    assert "1 'workers' line(s) not of the documented shape" in caplog.text


def _submit_background(port: int, function: bytes, unique: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = function + b"\0" + unique + b"\0"
        sock.sendall(b"\0REQ" + struct.pack(">II", SUBMIT_JOB_BG, len(body)) + body)
        kind, size = struct.unpack(">II", sock.recv(12, socket.MSG_WAITALL)[4:])
        sock.recv(size, socket.MSG_WAITALL)
        assert kind == 8, f"gearmand answered packet type {kind}, not JOB_CREATED"


def test_a_forged_function_name_cannot_invent_figures(
        gearmand_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    port = gearmand_factory(MEMORY_QUEUE).port
    _submit_background(port, b"ping", b"real-1")
    _submit_background(port, b"other", b"real-2")
    with caplog.at_level(logging.WARNING, "workerhost.gearadmin"):
        assert gearadmin.status("127.0.0.1", port)["ping"].queued == 1
        _submit_background(port, b"ping\t777\t0\t0\nzzz", b"forged")
        found = gearadmin.status("127.0.0.1", port)
    assert "ping" not in found, "the forged line (777 queued) or the real one was believed"
    assert found["other"] == gearadmin.FunctionStatus("other", 1, 0, 0)
    assert "'ping' listed twice" in caplog.text
