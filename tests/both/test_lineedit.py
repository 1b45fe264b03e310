"""tinymta.lineedit: what a terminal's keystrokes become.  Plain asserts; both runtimes."""
from tinymta.lineedit import LineEditor


def run(data, **kw):
    ed = LineEditor(**kw)
    events = ed.feed(data)
    return events, ed.take_output(), ed


def test_line_echoed_and_ended_by_cr_lf_or_crlf():
    for end in (b"\r", b"\n", b"\r\n", b"\n\r"):
        events, out, _ = run(b"status" + end)
        assert events == [("line", "status")], (end, events)
        assert out == b"status\r\n"
    # one Enter per line, whatever the terminal sends; an empty line is still a line
    events, _, _ = run(b"a\r\nb\r\n\r\n")
    assert events == [("line", "a"), ("line", "b"), ("line", "")]
    events, _, _ = run(b"a\r\rb\n\n")
    assert events == [("line", "a"), ("line", ""), ("line", "b"), ("line", "")]


def test_backspace_and_delete_erase_a_character_on_screen_and_in_the_line():
    events, out, _ = run(b"mailxx\x7f\x08q\r")
    assert events == [("line", "mailq")]
    assert out == b"mailxx\b \b\b \bq\r\n"
    events, out, _ = run(b"\x7f\x7fok\r")        # nothing to erase: nothing echoed
    assert events == [("line", "ok")] and out == b"ok\r\n"


def test_backspace_removes_a_whole_utf8_character():
    events, out, _ = run("send é".encode() + b"\x7f\r")
    assert events == [("line", "send ")]
    assert out.count(b"\b \b") == 1


def test_ctrl_c_drops_the_line_and_ctrl_u_erases_it():
    events, out, _ = run(b"delete 0001\x03status\r")
    assert events == [("cancel", ""), ("line", "status")]
    assert b"^C\r\n" in out
    events, out, _ = run(b"hold 12\x15mailq\r")
    assert events == [("line", "mailq")]
    assert out.startswith(b"hold 12" + b"\b \b" * 7)


def test_ctrl_d_only_on_an_empty_line():
    events, _, _ = run(b"\x04")
    assert events == [("eof", "")]
    events, _, _ = run(b"abc\x04\r")
    assert events == [("line", "abc")]


def test_escape_sequences_and_control_bytes_never_reach_the_line():
    # arrow keys (CSI and SS3 forms), F5, then NUL and BEL among the letters
    events, out, _ = run(b"\x1b[A\x1bOB\x1b[15~st\x00at\x07us\r")
    assert events == [("line", "status")]
    assert b"\x1b" not in out and b"\x00" not in out
    events, _, _ = run(b"log\t5\r")
    assert events == [("line", "log 5")]


def test_a_long_line_is_refused_whole_not_cut():
    ed = LineEditor(limit=16)
    events = ed.feed(b"x" * 10240 + b"\r")
    out = ed.take_output()
    assert events == [("toolong", "")]
    assert out.count(b"\x07") == 1 and len(out) < 64     # one bell, not 10 KB of echo
    assert ed.feed(b"ok\r") == [("line", "ok")]         # the next line is fine
    # erasing back under the limit does not bring back what was dropped: still refused
    ed.feed(b"y" * 20)
    ed.feed(b"\x7f" * 5)
    assert ed.feed(b"\r") == [("toolong", "")]
    ed.feed(b"y" * 20 + b"\x15")                       # Ctrl-U starts the line afresh
    assert ed.feed(b"ok\r") == [("line", "ok")]


def test_every_byte_value_is_survived():
    ed = LineEditor(limit=64)
    data = bytes(range(256)) * 4
    events = ed.feed(data)
    for kind, text in events:
        assert kind in ("line", "cancel", "eof", "toolong")
        assert isinstance(text, str)
    assert len(ed.buf) <= 64
    ed.feed(b"\x15")
    assert ed.feed(b"help\r")[-1] == ("line", "help")


def test_bytes_split_anywhere_give_the_same_lines():
    data = b"hold 00020000000A\r\nmailq\x1b[A\r\x7fstatus --json\n"
    whole, _, _ = run(data)
    for size in (1, 2, 3, 5):
        ed = LineEditor()
        got = []
        for i in range(0, len(data), size):
            got.extend(ed.feed(data[i:i + size]))
        assert got == whole, size


def test_invalid_utf8_is_replaced_not_raised():
    events, _, _ = run(b"send \xff\xfe@x\r")
    assert events[0][0] == "line" and events[0][1].startswith("send ")


def test_secret_input_is_not_echoed_and_no_echo_mode():
    ed = LineEditor()
    ed.secret = True
    assert ed.feed(b"hunter2\x7f2\r") == [("line", "hunter2")]
    assert ed.take_output() == b"\r\n"
    events, out, _ = run(b"status\r", echo=False)
    assert events == [("line", "status")] and out == b""


def test_a_control_byte_ends_a_broken_escape_sequence():
    # garbage (or a terminal killed mid-keystroke) left "ESC [": Ctrl-U and Enter still work
    for broken in (b"\x1b", b"\x1b[", b"\x1b[1;"):
        ed = LineEditor()
        ed.feed(b"junk" + broken)
        assert ed.feed(b"\x15status\r") == [("line", "status")], broken
        ed.feed(broken)
        assert ed.feed(b"\r") == [("line", "")], broken
