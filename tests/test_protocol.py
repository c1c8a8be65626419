"""Unit tests for listeners.core.protocol: parsing, frames and the loop, with StringIO streams."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listeners.core import protocol
from listeners.core.protocol import (
    Event,
    GenericEvent,
    Handler,
    LoopStats,
    PayloadError,
    ProcessCommunicationEvent,
    ProcessGroupEvent,
    ProcessLogEvent,
    ProcessStateEvent,
    ProtocolError,
    RemoteCommunicationEvent,
    SupervisorStateEvent,
    TickEvent,
    format_event,
    parse_event,
    parse_header,
)
from tests.fakes import run_listener


def header(eventname: str, length: int = 0, serial: int = 1, poolserial: int = 1):
    return parse_header(
        f"ver:3.0 server:supervisor serial:{serial} pool:p poolserial:{poolserial} "
        f"eventname:{eventname} len:{length}"
    )


def ev(eventname: str, payload: str, serial: int = 1) -> Event:
    return parse_event(header(eventname, len(payload), serial, serial), payload)


class Recorder(Handler):
    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.events: list[Event] = []
        self.lost: list[tuple[int, int]] = []
        self.timers = 0
        self.closed = False
        self.fail_on = fail_on or set()

    def handle(self, event: Event) -> None:
        self.events.append(event)
        if event.serial in self.fail_on:
            raise RuntimeError("handler bug")

    def on_events_lost(self, count: int, event: Event) -> None:
        self.lost.append((count, event.serial))

    def on_timer(self) -> None:
        self.timers += 1

    def close(self) -> None:
        self.closed = True


def run_stream(text: str, handler: Handler | None = None) -> tuple[int, str, Recorder]:
    h = handler or Recorder()
    code, out = run_listener(h, text)
    return code, out, h  # type: ignore[return-value]


class TestParseHeader:
    def test_reads_every_field(self):
        """All seven header fields are parsed, numbers as ints."""
        h = parse_header(
            "ver:3.0 server:supervisor serial:21 pool:listener poolserial:10 "
            "eventname:PROCESS_COMMUNICATION_STDOUT len:54"
        )
        assert (
            protocol.Header(
                "3.0", "supervisor", 21, "listener", 10, "PROCESS_COMMUNICATION_STDOUT", 54
            )
            == h
        )

    def test_value_may_contain_colons(self):
        """A server identification with ':' in it keeps everything after the first colon."""
        h = parse_header("ver:3.0 server:host:9001 serial:1 pool:p poolserial:1 eventname:X len:0")
        assert "host:9001" == h.server

    @pytest.mark.parametrize(
        "line",
        [
            "",
            "READY",
            "ver:3.0 server:s serial:1 pool:p poolserial:1 eventname:X",
            "ver:3.0 server:s serial:x pool:p poolserial:1 eventname:X len:0",
            "ver:3.0 server:s serial:1 pool:p poolserial:1 eventname:X len:-4",
            "garbage without colons at all",
        ],
    )
    def test_rejects_what_is_not_a_header(self, line):
        """Anything but a complete header raises ProtocolError."""
        with pytest.raises(ProtocolError):
            parse_header(line)


class TestParseEvent:
    def test_process_state_exited(self):
        """EXITED carries expected and pid as typed values."""
        e = ev(
            "PROCESS_STATE_EXITED",
            "processname:cat groupname:cat from_state:RUNNING expected:0 pid:2766",
        )
        assert isinstance(e, ProcessStateEvent)
        assert ("EXITED", "cat:cat", False, 2766, "RUNNING") == (
            e.state,
            e.full_name,
            e.expected,
            e.pid,
            e.from_state,
        )

    def test_process_state_backoff_has_tries(self):
        """BACKOFF/STARTING carry tries and no pid."""
        e = ev("PROCESS_STATE_BACKOFF", "processname:w groupname:g from_state:STARTING tries:2")
        assert isinstance(e, ProcessStateEvent)
        assert (2, None, None) == (e.tries, e.pid, e.expected)

    def test_tick(self):
        """TICK_60 gives its period and when."""
        e = ev("TICK_60", "when:1201063880")
        assert isinstance(e, TickEvent)
        assert (60, 1201063880) == (e.period, e.when)

    def test_group_added_and_removed(self):
        """PROCESS_GROUP_* payload ends with a newline in supervisord; both kinds parse."""
        added = ev("PROCESS_GROUP_ADDED", "groupname:cat\n")
        removed = ev("PROCESS_GROUP_REMOVED", "groupname:cat\n")
        assert isinstance(added, ProcessGroupEvent)
        assert isinstance(removed, ProcessGroupEvent)
        assert (True, False, "cat") == (added.added, removed.added, removed.groupname)

    def test_log_data_keeps_newlines_colons_and_len_tokens(self):
        """Log data after the first line is kept verbatim, whatever it contains."""
        data = "len:99 eventname:FAKE\nnaïve ✓ 日本\n\nkey:value"
        e = ev("PROCESS_LOG_STDOUT", f"processname:a groupname:b pid:5 channel:stdout\n{data}")
        assert isinstance(e, ProcessLogEvent)
        assert (data, "stdout", 5) == (e.data, e.channel, e.pid)

    def test_remote_communication(self):
        """REMOTE_COMMUNICATION splits type from data."""
        e = ev("REMOTE_COMMUNICATION", 'type:listeners.memmon\n{"a": 1}')
        assert isinstance(e, RemoteCommunicationEvent)
        assert ("listeners.memmon", '{"a": 1}') == (e.type, e.data)

    def test_process_communication(self):
        """PROCESS_COMMUNICATION_STDOUT carries pid and data."""
        e = ev("PROCESS_COMMUNICATION_STDOUT", "processname:a groupname:b pid:7\nhello")
        assert isinstance(e, ProcessCommunicationEvent)
        assert ("hello", 7) == (e.data, e.pid)

    def test_supervisor_state_change_has_empty_payload(self):
        """SUPERVISOR_STATE_CHANGE_RUNNING has len:0 and parses."""
        e = ev("SUPERVISOR_STATE_CHANGE_RUNNING", "")
        assert isinstance(e, SupervisorStateEvent)
        assert "RUNNING" == e.state

    def test_unknown_event_is_generic(self):
        """An event name this module does not know becomes a GenericEvent with its fields."""
        e = ev("SOMETHING_NEW", "a:1 b:2\nrest")
        assert isinstance(e, GenericEvent)
        assert {"a": "1", "b": "2"} == e.fields

    @pytest.mark.parametrize(
        ("name", "payload"),
        [
            ("PROCESS_STATE_RUNNING", "groupname:g from_state:STARTING pid:1"),
            ("PROCESS_STATE_RUNNING", "processname:a groupname:g pid:notanumber"),
            ("TICK_5", "when:soon"),
            ("TICK_X", "when:1"),
            ("PROCESS_LOG_STDERR", "processname:a groupname:g channel:stderr\nx"),
            ("REMOTE_COMMUNICATION", "\ndata"),
            ("PROCESS_STATE_EXITED", "not-a-token"),
        ],
    )
    def test_malformed_payloads_raise_payload_error(self, name, payload):
        """A payload missing or mangling a field raises PayloadError naming the problem."""
        with pytest.raises(PayloadError):
            ev(name, payload)


class TestLoop:
    def test_answers_ok_without_newline_then_ready(self):
        """READY first, then RESULT 2\\nOK (no newline) immediately followed by READY."""
        stream = format_event("TICK_5", "when:1") + format_event("TICK_5", "when:6", serial=2)
        code, out, h = run_stream(stream)
        assert 0 == code
        assert "READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n" == out
        assert [1, 2] == [e.serial for e in h.events]

    def test_len_counts_characters_not_bytes(self):
        """A non-ASCII payload is read by characters (supervisor#1243): the next frame is intact."""
        data = "processname:a groupname:b pid:1 channel:stdout\n日本語 ✓ café"
        stream = format_event("PROCESS_LOG_STDOUT", data) + format_event(
            "TICK_5", "when:1", serial=2
        )
        _, _, h = run_stream(stream)
        assert [data, "when:1"] == [e.payload for e in h.events]

    def test_real_descriptor_reads_utf8_split_across_reads(self):
        """On a pipe, multi-byte characters split between reads still count as one each."""
        data = "processname:a groupname:b pid:1 channel:stdout\n" + "é✓" * 40000
        raw = (format_event("PROCESS_LOG_STDOUT", data) + format_event("TICK_5", "when:1")).encode()
        r, w = os.pipe()
        writer = threading.Thread(target=lambda: (os.write(w, raw), os.close(w)))
        writer.start()
        h = Recorder()
        out = io.StringIO()
        with os.fdopen(r, "rb", buffering=0) as stdin:
            code = protocol.run(h, stdin, out, install_signals=False)
        writer.join()
        assert 0 == code
        assert [data, "when:1"] == [e.payload for e in h.events]

    def test_128kb_log_payload(self):
        """A PROCESS_LOG payload at supervisord's 128 KB cap passes whole."""
        data = "processname:a groupname:b pid:1 channel:stdout\n" + "x" * (128 * 1024)
        _, _, h = run_stream(format_event("PROCESS_LOG_STDOUT", data))
        assert [len(data)] == [len(e.payload) for e in h.events]

    def test_empty_payload(self):
        """len:0 events are handled and answered."""
        code, out, h = run_stream(format_event("SUPERVISOR_STATE_CHANGE_RUNNING", ""))
        assert (0, 1) == (code, len(h.events))
        assert out.endswith("OKREADY\n")

    def test_handler_exception_is_logged_and_answered_ok(self):
        """A handler bug never becomes FAIL (a redelivery hot loop) and never stops the loop."""
        stream = format_event("TICK_5", "when:1") + format_event("TICK_5", "when:2", serial=2)
        stats = LoopStats()
        h = Recorder(fail_on={1})
        code, out = run_listener(h, stream, stats=stats)
        assert 0 == code
        assert "FAIL" not in out
        assert (2, 1) == (len(h.events), stats.handler_errors)

    def test_bad_payload_is_answered_ok_and_skipped(self):
        """A malformed payload is logged, acknowledged, and not given to the handler."""
        stream = format_event("PROCESS_STATE_RUNNING", "garbage") + format_event(
            "TICK_5", "when:1", serial=2
        )
        stats = LoopStats()
        h = Recorder()
        _, out = run_listener(h, stream, stats=stats)
        assert 2 == out.count("RESULT 2\nOK")
        assert ([2], 1) == ([e.serial for e in h.events], stats.bad_payloads)

    def test_unparsable_header_exits_nonzero_without_answering(self):
        """A garbage header line means the stream is lost: exit 1 so supervisord restarts us."""
        code, out, h = run_stream("this is not a header\n")
        assert (1, "READY\n", []) == (code, out, h.events)
        assert h.closed

    def test_truncated_payload_exits_nonzero(self):
        """EOF in the middle of a payload is a lost stream."""
        code, _, _ = run_stream(format_event("TICK_5", "when:1")[:-2])
        assert 1 == code

    def test_eof_between_events_is_a_clean_exit(self):
        """supervisord closing our stdin between events ends the loop with 0."""
        assert 0 == run_stream("")[0]

    def test_poolserial_gap_reports_lost_events_once(self):
        """A jump in poolserial tells the handler how many events supervisord dropped."""
        stream = (
            format_event("TICK_5", "when:1", serial=10, poolserial=1)
            + format_event("TICK_5", "when:2", serial=11, poolserial=2)
            + format_event("TICK_5", "when:3", serial=20, poolserial=7)
            + format_event("TICK_5", "when:4", serial=21, poolserial=8)
        )
        stats = LoopStats()
        h = Recorder()
        run_listener(h, stream, stats=stats)
        assert [(4, 20)] == h.lost
        assert (4, 1) == (stats.lost_events, stats.gaps)

    def test_poolserial_restart_or_redelivery_is_not_a_loss(self):
        """A smaller or equal poolserial (supervisord restarted, redelivery) reports nothing."""
        stream = (
            format_event("TICK_5", "when:1", poolserial=5)
            + format_event("TICK_5", "when:1", poolserial=5)
            + format_event("TICK_5", "when:1", poolserial=0)
        )
        _, _, h = run_stream(stream)
        assert [] == h.lost

    def test_timer_fires_while_no_event_comes(self):
        """A handler with timer_interval is woken on a real descriptor without any event."""

        class Timed(Recorder):
            timer_interval = 0.01

        r, w = os.pipe()
        h = Timed()
        done = threading.Event()

        def feed() -> None:
            while h.timers < 3 and not done.wait(0.01):
                pass
            os.write(w, format_event("TICK_5", "when:1").encode())
            os.close(w)

        t = threading.Thread(target=feed)
        t.start()
        out = io.StringIO()
        with os.fdopen(r, "rb", buffering=0) as stdin:
            code = protocol.run(h, stdin, out, install_signals=False)
        done.set()
        t.join()
        assert 0 == code
        assert h.timers >= 3
        assert "READY\nRESULT 2\nOKREADY\n" == out.getvalue()

    def test_timer_also_fires_between_busy_events(self):
        """With a fake clock past the interval, on_timer runs after an event is handled."""

        class Timed(Recorder):
            timer_interval = 5.0

        now = [0.0]

        def clock() -> float:
            now[0] += 3.0
            return now[0]

        stream = "".join(format_event("TICK_5", f"when:{i}", serial=i) for i in range(1, 5))
        h = Timed()
        run_listener(h, stream, clock=clock)
        assert h.timers >= 1

    def test_sigterm_while_busy_finishes_the_event_then_exits(self):
        """SIGTERM during handle(): the event is answered OK, then the loop exits 0."""

        class Terminating(Recorder):
            def handle(self, event: Event) -> None:
                super().handle(event)
                os.kill(os.getpid(), signal.SIGTERM)

        stream = format_event("TICK_5", "when:1") + format_event("TICK_5", "when:2", serial=2)
        h = Terminating()
        out = io.StringIO()
        code = protocol.run(h, io.StringIO(stream), out)
        assert (0, 1) == (code, len(h.events))
        assert "READY\nRESULT 2\nOK" == out.getvalue()

    def test_sigterm_while_waiting_exits_at_once(self):
        """SIGTERM while blocked waiting for a header ends the loop with 0."""
        r, w = os.pipe()
        timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        timer.start()
        with os.fdopen(r, "rb", buffering=0) as stdin:
            code = protocol.run(Recorder(), stdin, io.StringIO())
        os.close(w)
        timer.join()
        assert 0 == code


names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters=":"),
    min_size=1,
    max_size=20,
)
data_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\r"), max_size=300
)


@st.composite
def events(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(["state", "log", "remote", "tick", "group", "empty"]))
    proc, group = draw(names), draw(names)
    if kind == "state":
        return "PROCESS_STATE_EXITED", (
            f"processname:{proc} groupname:{group} from_state:RUNNING "
            f"expected:{draw(st.integers(0, 1))} pid:{draw(st.integers(1, 2**22))}"
        )
    if kind == "log":
        return "PROCESS_LOG_STDOUT", (
            f"processname:{proc} groupname:{group} pid:1 channel:stdout\n{draw(data_text)}"
        )
    if kind == "remote":
        return "REMOTE_COMMUNICATION", f"type:{proc}\n{draw(data_text)}"
    if kind == "tick":
        return "TICK_60", f"when:{draw(st.integers(0, 2**31))}"
    if kind == "group":
        return "PROCESS_GROUP_ADDED", f"groupname:{group}\n"
    return "SUPERVISOR_STATE_CHANGE_STOPPING", ""


class TestRoundTrip:
    @settings(max_examples=150, deadline=None)
    @given(st.lists(events(), min_size=1, max_size=12))
    def test_random_events_survive_writer_and_parser(self, evs):
        """Any sequence of events written as supervisord does is read back exactly."""
        stream = "".join(
            format_event(name, payload, serial=i, poolserial=i)
            for i, (name, payload) in enumerate(evs, 1)
        )
        code, out, h = run_stream(stream)
        assert 0 == code
        assert [(n, p) for n, p in evs] == [(e.name, e.payload) for e in h.events]
        assert len(evs) == out.count("RESULT 2\nOK")
        for e, (name, payload) in zip(h.events, evs, strict=True):
            if name == "PROCESS_LOG_STDOUT":
                assert isinstance(e, ProcessLogEvent)
                assert payload.partition("\n")[2] == e.data

    @given(st.text(max_size=200))
    def test_parse_header_never_crashes_unexpectedly(self, line):
        """Arbitrary text either parses as a header or raises ProtocolError."""
        try:
            h = parse_header(line)
        except ProtocolError:
            return
        assert h.length >= 0
        assert f"eventname:{h.eventname}" in line


TICK = "ver:3.0 server:x serial:1 pool:p poolserial:1 eventname:TICK_5 len:{}\n"
BIG = "9" * 5000


def run_pipe(
    data: bytes, frame_timeout: float | None = None, signal_after: float | None = None
) -> tuple[int, str, bool]:
    """Run the loop on a pipe that stays open; returns (code, output, had to close the pipe).

    The pipe is closed after 10 s in any case, so a loop that would hang ends with EOF and the
    third value tells the test.
    """
    r, w = os.pipe()
    os.write(w, data)
    closed = threading.Event()

    def close() -> None:
        closed.set()
        os.close(w)

    closer = threading.Timer(10.0, close)
    closer.start()
    killer = None
    if signal_after is not None:
        killer = threading.Timer(signal_after, lambda: os.kill(os.getpid(), signal.SIGTERM))
        killer.start()
    out = io.StringIO()
    try:
        with os.fdopen(r, "rb", buffering=0) as stdin:
            kw = {} if frame_timeout is None else {"frame_timeout": frame_timeout}
            code = protocol.run(
                Recorder(), stdin, out, install_signals=signal_after is not None, **kw
            )
    finally:
        closer.cancel()
        if killer is not None:
            killer.cancel()
    if not closed.is_set():
        os.close(w)
    return code, out.getvalue(), closed.is_set()


class TestEdgeInputs:
    """Inputs supervisord never sends but a broken pipe can: one error line, never a crash."""

    @pytest.mark.parametrize(
        ("line", "needle"),
        [
            (TICK.format(10**20).strip(), "21-digit len"),
            (TICK.format(10**18).strip(), "beyond any event supervisord sends"),
            (TICK.format(6).replace("serial:1 ", f"serial:{BIG} ").strip(), "5000-digit serial"),
            (TICK.format(6).replace("len:6", "len:-6").strip(), "non-numeric len"),
            (TICK.format(6).replace("len:6", "len:\u0663").strip(), "non-numeric len"),
        ],
    )
    def test_absurd_header_numbers_are_protocol_errors(self, line, needle):
        """A huge len, a 5,000-digit serial or a non-ASCII digit: ProtocolError, not ValueError."""
        with pytest.raises(ProtocolError, match=needle):
            parse_header(line)

    def test_a_len_of_ten_to_the_twenty_exits_1_without_answering(self):
        """len:10^20 is a lost stream: exit 1 with READY only (no OverflowError)."""
        assert (1, "READY\n") == run_stream(TICK.format(10**20) + "when:1")[:2]

    @pytest.mark.parametrize(
        ("name", "payload"),
        [
            ("PROCESS_STATE_RUNNING", f"processname:a groupname:a from_state:STARTING pid:{BIG}"),
            ("PROCESS_LOG_STDOUT", f"processname:a groupname:a pid:{BIG} channel:stdout\nx"),
            ("PROCESS_COMMUNICATION_STDOUT", f"processname:a groupname:a pid:{BIG}\nx"),
            ("TICK_60", f"when:{BIG}"),
            (f"TICK_{BIG}", "when:1"),
        ],
    )
    def test_a_5000_digit_number_in_a_payload_is_a_bad_payload(self, name, payload):
        """Such an event is logged and acknowledged (a redelivered one would fail again)."""
        with pytest.raises(PayloadError, match=r"digit|TICK_"):
            ev(name, payload)
        code, out, h = run_stream(format_event(name, payload))
        assert (0, "READY\nRESULT 2\nOKREADY\n", []) == (code, out, h.events)

    def test_stdout_closed_by_the_reader_exits_1(self):
        """Writing a frame into a pipe nobody reads (EPIPE) ends the loop with 1, no traceback."""
        r, w = os.pipe()
        os.close(r)
        with os.fdopen(w, "w") as out:
            code = protocol.run(
                Recorder(), io.StringIO(format_event("TICK_5", "when:1")), out,
                install_signals=False,
            )  # fmt: skip
        assert 1 == code

    def test_closed_stdio_descriptors_exit_1(self, monkeypatch):
        """Started with descriptor 1 closed (sys.stdout is None): exit 1 before any frame."""
        monkeypatch.setattr("sys.stdout", None)
        assert 1 == protocol.run(Recorder(), install_signals=False)

    def test_a_payload_ending_mid_utf8_does_not_hang(self):
        """The last character's bytes never come: after frame_timeout the loop exits 1."""
        code, out, had_to_close = run_pipe(TICK.format(7).encode() + b"when:1\xc3", 0.3)
        assert (1, "READY\n", False) == (code, out, had_to_close)

    def test_a_stalled_payload_names_the_cut_character(self):
        """The error says the stream stopped inside a UTF-8 character."""
        r, w = os.pipe()
        os.write(w, b"ab\xc3")
        reader = protocol._Reader(os.fdopen(r, "rb", buffering=0))
        with pytest.raises(ProtocolError, match="2 of 3 characters and ends inside a UTF-8"):
            reader.read_chars(3, 0.1)
        os.close(w)

    @pytest.mark.parametrize(
        "data",
        [
            TICK.format(70).encode() + b"when:1",  # inside a payload
            b"ver:3.0 server:x seri",  # inside a header line
        ],
        ids=["payload", "header"],
    )
    def test_sigterm_during_a_partial_frame_exits_1_at_once(self, data):
        """SIGTERM while half a frame is read: exit 1 unanswered, without waiting for the rest."""
        code, out, had_to_close = run_pipe(data, signal_after=0.3)
        assert (1, "READY\n", False) == (code, out, had_to_close)


frames = st.lists(events(), min_size=1, max_size=6).map(
    lambda evs: "".join(format_event(n, p, serial=i) for i, (n, p) in enumerate(evs, 1)).encode()
)


class TestBrokenStreams:
    @settings(max_examples=200, deadline=None)
    @given(
        frames,
        st.lists(
            st.tuples(
                st.integers(0, 10_000),
                st.sampled_from([b"", b"\xc3", b"\xff", b"9" * 30, b"\n", b"len:", b" "]),
                st.integers(0, 3),
            ),
            max_size=4,
        ),
        st.integers(0, 10_000),
    )
    def test_any_damaged_stream_ends_with_0_or_1_and_only_frames_on_stdout(
        self, stream, edits, cut
    ):
        """Cut, spliced or mangled frames: the loop returns 0 or 1, never raises or hangs."""
        data = bytearray(stream)
        for where, insert, drop in edits:
            at = min(where, len(data))
            data[at : at + drop] = insert
        data = data[: min(cut, len(data))] if cut % 2 else data
        out = io.StringIO()
        code = protocol.run(Recorder(), io.BytesIO(bytes(data)), out, install_signals=False)
        assert code in (0, 1)
        rest = out.getvalue().removeprefix("READY\n")
        assert "" == rest.replace("RESULT 2\nOKREADY\n", "").replace("RESULT 2\nOK", "")


class TestARealListenerOnABrokenPipe:
    """The same edge inputs fed to a real listener process: what a person reads on stderr is
    one error line and a non-zero exit, never a traceback."""

    @pytest.mark.parametrize(
        "stream",
        [
            TICK.format(10**20) + "when:1",
            TICK.format(6).replace("serial:1 ", f"serial:{BIG} ") + "when:1",
            TICK.format(8) + "caf\u00e9",  # the payload ends in the middle of a UTF-8 character
            "not a header at all\n",
        ],
        ids=["huge-len", "5000-digit-serial", "mid-utf8", "garbage"],
    )
    @pytest.mark.parametrize("tool", ["crashmail", "exporter"])
    def test_one_line_on_stderr_and_exit_1(self, tool, stream, tmp_path):
        args = {
            "crashmail": ["--sink", f"file:{tmp_path}/a.jsonl", "--outbox", f"{tmp_path}/o.db"],
            "exporter": ["--web.listen-address", "127.0.0.1:0"],
        }[tool]
        env = {
            **os.environ,
            "SUPERVISOR_SERVER_URL": "unix:///nonexistent/supervisor.sock",
            "PYTHONPATH": str(Path(__file__).parents[1]),
        }
        data = stream.encode("utf-8")
        if stream.endswith("caf\u00e9"):
            data = data[:-1]  # cut inside the two bytes of the last character
        done = subprocess.run(
            [sys.executable, "-m", f"listeners.{tool}", *args],
            input=data,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        err = done.stderr.decode("utf-8", "replace")
        assert done.returncode != 0, err
        assert "Traceback" not in err, err
        said = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
        errors = [d for d in said if d["level"] == "error" and d["event"].startswith("protocol.")]
        assert 1 == len(errors), err
        assert done.stdout in (b"", b"READY\n"), done.stdout
