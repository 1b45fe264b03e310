"""SMTP smuggling, pipelining and resynchronisation against a running `python -m tinymta serve`, over
raw sockets (protocol.md §1.12 SM1-SM7, X2; DESIGN invariant 5).

Every SM2 variant is sent as smtpsmug sends it (a body line, the bad terminator) and as the SEC
Consult attack does (the bad terminator right after the text), followed by a smuggled
`MAIL FROM:<evil@x>` / `RCPT TO:<victim@y>` / `DATA` / message, then a proper CRLF.CRLF: in both
bare_newlines modes at most one message is queued, never the smuggled one, the client gets exactly
one reply for the whole DATA, and none before the real terminator.
"""
import random
import socket

import pytest

from mtaproc import MTA, strip_added
from serverkit import Wire, complete_message, stuff

MODES = ["reject", "normalize"]
# protocol.md §1.12 SM2: smtpsmug's list (its "nullafter" repeats "nullbefore"; the SM2 row's form
# is used), plus a '.' line ended by a bare CR before a CRLF, and a '.' line after a bare-LF empty line
VARIANTS = {
    "lflf": b"\n.\n", "crcr": b"\r.\r", "crlf": b"\r.\n", "lfcr": b"\n.\r", "lfcrlf": b"\n.\r\n",
    "crlflf": b"\r\n.\n", "crcrlf": b"\r.\r\n", "crlfcr": b"\r\n.\r", "nullbefore": b"\r\n\x00.\r\n",
    "nullafter": b"\r\n.\x00\r\n", "crlf-dot-cr-crlf": b"\r\n.\r\r\n", "lf-lf-dot-crlf": b"\n\n.\r\n",
}
BARE = [k for k in VARIANTS if not k.startswith("null")]     # these hold a bare CR or LF
SMUGGLED = (b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nFrom: <evil@x>\r\nTo: <victim@y>\r\n"
            b"Subject: smuggled\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <evil@x>\r\n\r\n"
            b"smuggled body")
HEAD = (b"From: <alice@client.test>\r\nTo: <bob@example.test>\r\nSubject: Hello World\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <smug@client.test>\r\n\r\n")


def open_data(w, sender=b"alice@client.test", rcpt=b"bob@example.test"):
    w.ehlo()
    w.expect(b"MAIL FROM:<%s>" % sender, 250)
    w.expect(b"RCPT TO:<%s>" % rcpt, 250)
    w.expect(b"DATA", 354)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_smuggling_variant(tmp_path, mode, variant):
    bad = VARIANTS[variant]
    replies = {}
    with MTA(tmp_path, server={"bare_newlines": mode}) as mta:
        for placement, text in (("smtpsmug", b"This is a test mail.\r\n"), ("attack", b"This is a test mail.")):
            with Wire(mta.port) as w:
                open_data(w)
                w.send(HEAD + text + bad)
                assert w.quiet(0.25), (placement, w.buf)              # no reply at the bad terminator
                w.send(SMUGGLED + b"\r\n.\r\n" + b"QUIT\r\n")
                got = w.replies_until_close()
                assert len(got) == 2 and got[1][0] == 221, (placement, got)   # one verdict, then the 221
                replies[placement] = got[0][1][0]
            # the same bytes in one write, as a pipelining attacker sends them
            with Wire(mta.port) as w:
                open_data(w)
                w.send(HEAD + text + bad + SMUGGLED + b"\r\n.\r\n" + b"QUIT\r\n")
                got = w.replies_until_close()
                assert len(got) == 2 and got[1][0] == 221, (placement, got)
                assert got[0][1][0][:3] == replies[placement][:3], (got, replies)
    msgs = mta.messages()
    assert not [m for m in msgs if m[0] == "evil@x" or "victim@y" in m[1]], msgs
    assert all(m[:2] == ("alice@client.test", ["bob@example.test"]) for m in msgs), msgs
    accepted = sum(2 for r in replies.values() if r.startswith(b"250 "))
    assert len(msgs) == accepted, (msgs, replies)          # per session: 250 <=> exactly one queued
    for placement, reply in replies.items():
        if mode == "reject" and variant in BARE:            # SM3: refused at the real terminator
            assert reply == b"550 5.6.0 Bare CR or LF not allowed in message", (placement, reply)
        elif mode == "normalize":                           # SM4: accepted, but nothing ended early
            assert reply.startswith(b"250 2.0.0 Ok: queued as "), (placement, reply)
    for _, _, body in msgs:                                 # the smuggled commands are message text
        assert b"\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\n" in body, body
        assert strip_added(body).startswith(HEAD) and body.endswith(b"smuggled body\r\n"), body


def pipelined_stream(n=6):
    """EHLO is sent first; then n transactions (one cancelled with RSET) and QUIT in one stream."""
    rnd = random.Random(5321)
    sent, stream, expect = [], bytearray(), []
    for i in range(n):
        sender = "s%d@client.test" % i
        rcpts = ["r%d@example.test" % i] + (["c%d@example.test" % i] if i % 2 else [])
        lines = b"".join(b"%d.%d %s\r\n" % (i, k, b".." if k % 7 == 0 else b"x" * rnd.randrange(0, 200))
                         for k in range([5, 400, 30, 2, 900, 1][i % 6]))     # up to ~90 KB: many reads
        msg = complete_message(sender=sender, rcpt=rcpts[0], tag="p%d" % i, body=b".leading dot\r\n" + lines)
        stream += b"MAIL FROM:<%s>\r\n" % sender.encode()
        stream += b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
        expect += [250] * (1 + len(rcpts))
        if i == 3:                                          # cancelled: must not be queued
            stream += b"RSET\r\n"
            expect.append(250)
            continue
        stream += b"DATA\r\n" + stuff(msg)
        expect += [354, 250]
        sent.append((sender, rcpts, msg))
    stream += b"NOOP\r\nQUIT\r\n"
    expect += [250, 221]
    return bytes(stream), expect, sent


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["one-write", "trickled"])
def test_pipelined_messages_queued_in_order(tmp_path, mode, how):
    stream, expect, sent = pipelined_stream()
    with MTA(tmp_path, server={"bare_newlines": mode}) as mta:
        with Wire(mta.port, timeout=20) as w:
            w.ehlo()
            if how == "one-write":
                w.send(stream)
            else:                                           # pieces of 1..700 bytes, no delay
                w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                rnd, pos = random.Random(2920), 0
                while pos < len(stream):
                    step = rnd.randrange(1, 700)
                    w.send(stream[pos:pos + step])
                    pos += step
            got = w.replies_until_close(timeout=30)
    assert [code for code, _ in got] == expect, got
    msgs = mta.messages()
    assert [(m[0], m[1]) for m in msgs] == [(s, r) for s, r, _ in sent]
    assert [strip_added(m[2]) for m in msgs] == [m for _, _, m in sent]


EMBEDDED = b"RSET\r\nNOOP\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nQUIT\r\n"


@pytest.mark.parametrize("mode", MODES)
def test_oversized_body_one_552_and_no_replies_to_embedded_lines(tmp_path, mode):
    filler = b"".join(b"line %04d of an oversized message\r\n" % i for i in range(300))    # ~10 KB
    body = HEAD + EMBEDDED + filler + EMBEDDED + filler + b"\r\n" + EMBEDDED + b".\r\n"   # stuffed: a '.' line
    with MTA(tmp_path, server={"bare_newlines": mode, "max_message_size": 4096}) as mta:
        with Wire(mta.port) as w:
            w.ehlo()
            w.expect(b"MAIL FROM:<alice@client.test>", 250)
            w.expect(b"RCPT TO:<bob@example.test>", 250)
            w.expect(b"DATA", 354)
            w.send(stuff(body)[:-3])                    # everything but the final ".\r\n"
            assert w.quiet(0.3), w.buf                  # no reply to any embedded line, no early 552
            w.send(b".\r\nNOOP\r\n")
            code, lines = w.reply()
            assert lines == [b"552 5.3.4 Message size exceeds fixed maximum message size"], lines
            assert w.reply() == (250, [b"250 2.0.0 Ok"])   # the NOOP after the real end: in sync
            assert w.quiet(0.2), w.buf                  # nothing else came
            w.expect(b"MAIL FROM:<alice@client.test>", 250)    # the session is usable again
            w.expect(b"RCPT TO:<bob@example.test>", 250)
            w.expect(b"DATA", 354)
            small = complete_message(tag="after-552")
            w.send(stuff(small) + b"QUIT\r\n")
            got = w.replies_until_close()
            assert [c for c, _ in got] == [250, 221], got
    assert [(m[0], m[1], strip_added(m[2])) for m in mta.messages()] == [
        ("alice@client.test", ["bob@example.test"], small)]
    assert "evil@x" not in mta.log()
