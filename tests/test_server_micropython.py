"""The SMTP server itself running under MicroPython (the unix port), fed by CPython's smtplib.

`micropython -m tinymta serve -c config.json` (tests/mtaproc.py, runtime="micropython": a 1 MiB
spool of 4 KiB sectors, 256-byte program units, as on a board) must:

  - accept mail from smtplib, from a client pipelining several messages in one session, and a
    100 KiB message, and store each byte-exact (apart from the Received field it adds);
  - stop cleanly on SIGINT (exit status 0; an open session gets 421 4.3.2), and find the
    messages again when restarted; MicroPython has no signal handlers, so SIGTERM ends it at
    once, which must lose nothing either (it is a power cut as far as the spool can tell);
  - lose nothing when SIGKILLed right after a 250.

Skipped (with the reason) where the MicroPython unix port is not installed.
"""
import collections
import os
import random
import signal
import smtplib
import subprocess
import time

import pytest

from mtaproc import MICROPYTHON, MTA, strip_added
from smtpwire import Wire, make_message, smtp_send, stuffed

pytestmark = pytest.mark.skipif(not os.path.exists(MICROPYTHON),
                                reason="MicroPython unix port not installed (%s)" % MICROPYTHON)


def _tag(body):
    i = body.find(b"Message-ID: <")
    return body[i + 13:body.find(b"@", i)].decode() if i >= 0 else repr(body[:60])


def _check(mta, sent):
    """sent: {body: (sender, rcpt)}: the spool holds exactly these, once each, byte-exact."""
    got = mta.messages()
    bodies = [strip_added(b) for _, _, b in got]
    dups = [_tag(b) for b, n in collections.Counter(bodies).items() if n > 1]
    assert not dups, "in the spool more than once: %r" % dups
    stray = [(_tag(b), len(b)) for b in bodies if b not in sent]
    assert not stray, "in the spool but never sent complete: %r" % stray
    lost = [_tag(b) for b in sent if b not in set(bodies)]
    assert not lost, "accepted but not in the spool: %r" % lost
    for sender, rcpts, body in got:
        assert (sender, rcpts) == (sent[strip_added(body)][0], [sent[strip_added(body)][1]])
    return got


def _pipelined_session(port, msgs):
    """One session: each message's MAIL/RCPT/DATA group goes out with the previous body's end."""
    def group(sender, rcpt):
        return b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (sender.encode(), rcpt.encode())

    w = Wire(port, timeout=20)
    try:
        assert w.greeting[0] == 220
        code, text = w.cmd(b"EHLO pipeliner.test")
        assert code == 250 and b"PIPELINING" in text
        w.send(group(*msgs[0][1]))
        finals = []
        for i, (body, env) in enumerate(msgs):
            replies = [w.reply() for _ in range(3)]
            assert [r[0] for r in replies] == [250, 250, 354], replies
            nxt = group(*msgs[i + 1][1]) if i + 1 < len(msgs) else b"QUIT\r\n"
            w.send(stuffed(body) + nxt)
            finals.append(w.reply())
        assert w.reply()[0] == 221
        assert w.at_eof()
        return finals
    finally:
        w.close()


def test_micropython_server_stores_mail_byte_exact_and_restart_finds_it(tmp_path):
    rng = random.Random(11)
    sent = {}
    mta = MTA(tmp_path, runtime="micropython")
    with mta:
        # plain smtplib, two messages in one session
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=20) as s:
            s.ehlo("plain.test")
            for i in range(2):
                body = make_message("mp-plain-%d" % i, rng.choice((300, 3000)), rng)
                code, text = smtp_send(s, "plain@client.test", "ops@example.org", body)
                assert code == 250, (code, text)
                sent[body] = ("plain@client.test", "ops@example.org")
            s.quit()
        # several messages pipelined in one session
        msgs = [(make_message("mp-pipe-%d" % i, rng.choice((200, 2000, 9000)), rng),
                 ("pipe%d@client.test" % i, "ops%d@example.org" % i)) for i in range(5)]
        finals = _pipelined_session(mta.port, msgs)
        assert [f[0] for f in finals] == [250] * 5, finals
        assert len({f[1] for f in finals}) == 5
        sent.update(msgs)
        # a 100 KiB message (many spool fragments)
        big = make_message("mp-big", 100 * 1024, rng)
        assert len(big) >= 100 * 1024
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as s:
            s.ehlo("big.test")
            code, text = smtp_send(s, "big@client.test", "ops@example.org", big)
            assert code == 250, (code, text, mta.log()[-2000:])
            s.quit()
        sent[big] = ("big@client.test", "ops@example.org")
    _check(mta, sent)
    # a restart mounts the spool and finds them all
    again = MTA(tmp_path, runtime="micropython")
    with again:
        with smtplib.SMTP("127.0.0.1", again.port, timeout=20) as s:
            assert s.noop()[0] == 250
            s.quit()
    assert "(%d messages)" % len(sent) in again.log(), again.log()[-2000:]
    _check(again, sent)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_micropython_server_signal_stops_cleanly(tmp_path, signame):
    """SIGINT (Ctrl-C) is the clean stop on MicroPython: exit 0 and 421 for open sessions.
    SIGTERM cannot be caught there: the process ends at once, and nothing stored is lost."""
    rng = random.Random(12)
    body = make_message("mp-" + signame, 4000, rng)
    mta = MTA(tmp_path, runtime="micropython").start()
    w = None
    try:
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=20) as s:
            s.ehlo("before.test")
            assert smtp_send(s, "t@client.test", "ops@example.org", body)[0] == 250
            s.quit()
        w = Wire(mta.port, timeout=10)          # a session open at the signal
        assert w.cmd(b"EHLO open.test")[0] == 250
        # let the server go back to waiting in poll(): under MicroPython, SIGINT raises
        # KeyboardInterrupt wherever the loop is, and one landing between a send() and the
        # clearing of the output buffer makes shutdown() send the EHLO reply a second time
        time.sleep(0.3)
        mta.proc.send_signal(getattr(signal, signame))
        try:
            mta.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        rc = mta.proc.poll()
        mta.stop()                              # reaps it if it is somehow still running
        try:
            last = w.reply()
        except (EOFError, OSError) as e:
            last = e
    finally:
        if w is not None:
            w.close()
        if mta.proc is not None:
            mta.kill()
    if signame == "SIGINT":
        assert rc == 0, "SIGINT did not stop the MicroPython server cleanly: exit status %r\n%s" % (
            rc, mta.log()[-1500:])
        assert isinstance(last, tuple) and last[0] == 421 and last[1].startswith(b"4.3.2"), last
        assert mta.log().rstrip().endswith("stopped"), mta.log()[-1500:]
    else:
        assert rc == -signal.SIGTERM and not isinstance(last, tuple), (rc, last)
    _check(mta, {body: ("t@client.test", "ops@example.org")})
    with MTA(tmp_path, runtime="micropython") as again:
        pass
    assert "(1 messages)" in again.log(), again.log()[-1500:]


def test_micropython_server_sigkill_after_250_loses_nothing(tmp_path):
    rng = random.Random(13)
    sent = {}
    for rnd in range(6):
        mta = MTA(tmp_path, runtime="micropython", spool={"size": "2M"}).start()
        conns = []
        try:
            body = make_message("mp-kill-%d" % rnd, rng.choice((500, 6000, 30000, 90000)), rng)
            env = ("k%d@client.test" % rnd, "ops@example.org")
            w = Wire(mta.port, timeout=20)
            conns.append(w)
            assert w.cmd(b"EHLO killer.test")[0] == 250
            w.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (env[0].encode(), env[1].encode()))
            assert [w.reply()[0] for _ in range(3)] == [250, 250, 354]
            payload = stuffed(body)
            w.send(payload[:-3])
            if rnd % 2:                         # another client in the middle of its DATA
                other = Wire(mta.port, timeout=20)
                conns.append(other)
                assert other.cmd(b"EHLO other.test")[0] == 250
                other.send(b"MAIL FROM:<other@client.test>\r\nRCPT TO:<ops@example.org>\r\nDATA\r\n")
                assert [other.reply()[0] for _ in range(3)] == [250, 250, 354]
                half = stuffed(make_message("mp-half-%d" % rnd, 20000, rng))
                other.send(half[:len(half) // 2])
            w.send(b".\r\n")
            code, text = w.reply()
            mta.kill()                          # right after the 250
            assert code == 250, (code, text, mta.log()[-2000:])
            sent[body] = env
        finally:
            for c in conns:
                c.close()
            if mta.proc is not None:
                mta.kill()
        _check(mta, sent)
