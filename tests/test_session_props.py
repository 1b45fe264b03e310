"""Property tests for tinymta.session (CPython only: pytest + hypothesis).

1. Any byte stream, split at any points, gives the same events as the stream fed at once, under
   any policy, and never raises (an internal fault would show as Session.last_error).
2. DATA framing against an independent oracle written with `re`: the message ends at the first
   raw CRLF.CRLF, lines are unstuffed, bare CR/LF are refused ("reject") or become CRLF
   ("normalize"), lines over 998 octets are refused, and nothing after the body is lost.
3. In command mode every line (ended by CRLF or a bare LF) gets exactly one reply (RFC 5321
   §4.2 / protocol.md G17), whatever its length or content.
"""
import re

from hypothesis import given, settings, strategies as st, HealthCheck

from tinymta.session import Session, Policy, CHUNK

SETTINGS = settings(max_examples=int(__import__("os").environ.get("SESSION_PROP_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKENS = [b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.\r\n", b"\r\n.", b".\r\n", b"\x00", b" ",
          b"EHLO x.test", b"HELO x", b"MAIL FROM:<a@b.test>", b"MAIL FROM:<>", b"MAIL FROM:<bad@x.test>",
          b"RCPT TO:<c@d.test>", b"RCPT TO:<deny@d.test>", b"RCPT TO:<postmaster>", b"DATA", b"RSET",
          b"NOOP", b"QUIT", b"VRFY x", b"HELP", b"STARTTLS", b"AUTH PLAIN", b"AUTH LOGIN",
          b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"YWxpY2U=", b"c2VjcmV0", b"*", b"=", b" SIZE=10",
          b" BODY=8BITMIME", b"Received: x", b"Subject: y", b"x" * 500, b"y" * 997, b"z" * 1023,
          b"\xc3\xa9", b"<", b">", b"@", b"TURN", b"mail from:<A@B.TEST> "]

token_streams = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)),
                         max_size=60).map(b"".join)


@st.composite
def policies(draw):
    p = Policy(hostname="mx.test")
    p.bare_newlines = draw(st.sampled_from(["reject", "normalize"]))
    p.max_message_size = draw(st.sampled_from([0, 40, 3000, 1048576]))
    p.max_recipients = draw(st.sampled_from([1, 2, 100]))
    p.max_received = draw(st.sampled_from([0, 1, 100]))
    p.tls_available = draw(st.booleans())
    p.auth_available = draw(st.booleans())
    p.auth_without_tls = draw(st.booleans())
    p.max_errors = draw(st.sampled_from([0, 3, 20]))
    return p


def drive(pol, pieces):
    """Feed pieces, answering verdicts from the event contents only (deterministic)."""
    s = Session(pol)
    s.greeting()
    events = []
    for piece in pieces:
        s.receive(piece)
        while True:
            ev = s.next_event()
            if ev is None:
                break
            events.append(ev)
            kind = ev[0]
            if kind == "reply":
                assert ev[1].endswith(b"\r\n") and ev[1][:1] in b"2345" and ev[1][:3].isdigit()
            elif kind == "body":
                assert 0 < len(ev[1]) <= CHUNK
            elif kind == "mail":
                s.reject_mail(b"550 5.7.1 no") if b"bad" in ev[1] else s.accept_mail()
            elif kind == "rcpt":
                s.reject_rcpt(b"550 5.7.1 no") if b"deny" in ev[1] else s.accept_rcpt()
            elif kind == "data_end":
                s.message_failed(b"452 4.3.1 full") if len(events) % 3 == 0 else s.message_accepted(b"Q")
            elif kind == "auth":
                s.auth_result(ev[3] == b"secret")
            # "starttls": never completed here; the session then drops all input (deterministic)
        assert s.last_error is None, repr(s.last_error)
    return events


def split(data, cuts):
    cuts = sorted(set(c % (len(data) + 1) for c in cuts))
    out, prev = [], 0
    for c in cuts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return out


@SETTINGS
@given(pol=policies(), data=token_streams, cuts=st.lists(st.integers(0, 10 ** 6), max_size=12))
def test_any_split_gives_the_same_events(pol, data, cuts):
    assert drive(pol, split(data, cuts)) == drive(pol, [data])


@SETTINGS
@given(pol=policies(), data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_random_bytes_never_raise(pol, data, cuts):
    prefix = b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
    assert drive(pol, split(data, cuts)) == drive(pol, [data])
    assert drive(pol, split(prefix + b"DATA\r\n" + data, cuts)) == drive(pol, [prefix + b"DATA\r\n" + data])


BODY_TOKENS = [b"\r\n", b"\r", b"\n", b".", b"..", b"x", b"ab", b"\x00", b"\r\n.", b".\r", b"\n.",
               b"w" * 400, b"v" * 998, b"\r\n..\r\n", b"MAIL FROM:<e@x.test>\r\n", b"DATA\r\n"]
bodies = st.lists(st.one_of(st.sampled_from(BODY_TOKENS), st.binary(max_size=6)), max_size=40).map(b"".join)


def oracle(body, mode):
    """Expected (stored body or None, refusal code) for DATA content `body` (without the final
    CRLF.CRLF), by a different method: a regex tokenizer over the raw bytes."""
    parts = re.split(b"(\r\n|\r|\n)", body + b"\r\n")
    stored, refusal = [], None
    for i in range(0, len(parts) - 1, 2):
        line, sep = parts[i], parts[i + 1]
        if line.startswith(b"."):
            line = line[1:]
        if refusal is None and len(line) > 998:
            refusal = b"554"
        if refusal is None and sep != b"\r\n" and mode == "reject":
            refusal = b"550"
        stored.append(line + b"\r\n")
    assert parts[-1] == b""
    return (None if refusal else b"".join(stored)), refusal


@SETTINGS
@given(body=bodies, mode=st.sampled_from(["reject", "normalize"]),
       cuts=st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_data_framing_matches_oracle(body, mode, cuts):
    stream = b"\r\n" + body + b"\r\n.\r\n"
    if stream.find(b"\r\n.\r\n") != len(body) + 2:
        body = body.replace(b"\r\n.\r\n", b"\r\n..\r\n")          # keep one real terminator
        stream = b"\r\n" + body + b"\r\n.\r\n"
        if stream.find(b"\r\n.\r\n") != len(body) + 2:
            return
    pol = Policy(hostname="mx.test", bare_newlines=mode, max_message_size=0, max_received=10 ** 6)
    pol.max_errors = 0
    data = (b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n" + body +
            b"\r\n.\r\nNOOP\r\n")
    events = drive(pol, split(data, cuts))
    expected, refusal = oracle(body, mode)
    kinds = [e[0] for e in events]
    assert kinds.count("data_start") == 1 and kinds.count("mail") == 1
    got = b"".join(e[1] for e in events if e[0] == "body")
    if refusal:
        assert "data_end" not in kinds and "data_abort" in kinds
        assert events[-2][1][:3] == refusal and events[-1] == ("reply", b"250 2.0.0 Ok\r\n")
    else:
        assert "data_abort" not in kinds and got == expected
        assert events[-1] == ("reply", b"250 2.0.0 Ok\r\n")
        assert events[-2][0] == "reply" and events[-2][1][:4] in (b"250 ", b"452 ")


line_bodies = st.one_of(st.sampled_from([b"NOOP", b"RSET", b"VRFY x", b"EHLO x", b"MAIL FROM:<a@b.test>",
                                         b"RCPT TO:<c@d.test>", b"HELP", b"AUTH LOGIN", b"AUTH PLAIN",
                                         b"*", b"FOO", b"", b"x" * 600, b"AUTH PLAIN " + b"A" * 600,
                                         b"N\rOOP", b"\x00"]),
                        st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")))


@SETTINGS
@given(lines=st.lists(st.tuples(line_bodies, st.sampled_from([b"\r\n", b"\n"])), min_size=1, max_size=30),
       cuts=st.lists(st.integers(0, 10 ** 6), max_size=8))
def test_one_reply_per_command_line(lines, cuts):
    stream = b"".join(l + t for l, t in lines)
    pol = Policy(hostname="mx.test", auth_available=True, auth_without_tls=True)
    pol.max_errors = 0
    n = 0
    for l, t in lines:
        content = l[:-1] if l.endswith(b"\r") else l          # b"QUIT\r" + b"\n" is a CRLF line
        word = content.split(b" ")[0].upper()
        if word in (b"DATA", b"STARTTLS", b"QUIT") and len(l) < 512:
            return                                  # these leave command mode; covered elsewhere
        n += 1
    events = drive(pol, split(stream, cuts))
    assert len([e for e in events if e[0] == "reply"]) == n
