"""Property tests for tinymta.client (CPython only: pytest + hypothesis).

1. Any server byte stream, split at any points, gives the same events (and the same bytes
   written) as the stream fed at once, under any client configuration, and never raises (an
   internal fault would show as Client.last_error).  Events are well formed, ("closed",) is the
   last one, and credentials are only ever written over TLS.  Bytes after the 220 to STARTTLS
   are plaintext injection: the driver stops feeding that stream and goes on with a second one,
   "after the handshake".
2. The body encoder against an independent oracle written with `re` (stray CR/LF to CRLF, a
   final CRLF, dot-stuffing, the final dot), for any chunking; and the tinymta server Session,
   fed the wire bytes, gets exactly the normalised content back: one message, ended only where
   the client ended it (protocol.md SM5).
"""
import os
import re

from hypothesis import HealthCheck, given, settings, strategies as st

from tinymta.client import Client, TLS_MODES
from tinymta.clientproto import BodyEncoder, b64
from tinymta.session import Policy, Session

SETTINGS = settings(max_examples=int(os.environ.get("CLIENT_PROP_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

TOKENS = [b"220 mx.test ESMTP\r\n", b"220-mx.test\r\n", b"250-mx.test\r\n", b"250-PIPELINING\r\n",
          b"250-SIZE 1000\r\n", b"250-SIZE\r\n", b"250-8BITMIME\r\n", b"250-STARTTLS\r\n",
          b"250-AUTH PLAIN LOGIN\r\n", b"250-AUTH=LOGIN\r\n", b"250 HELP\r\n", b"250 ok\r\n",
          b"250 2.1.5 ok\r\n", b"251 2.1.5 forwarded\r\n", b"354 go\r\n", b"334 VXNlcm5hbWU6\r\n",
          b"334 \r\n", b"235 2.7.0 ok\r\n", b"220 2.0.0 TLS go\r\n", b"221 2.0.0 bye\r\n",
          b"450 4.2.0 grey\r\n", b"452 4.5.3 too many\r\n", b"454 4.7.0 no TLS\r\n", b"502 5.5.1 no\r\n",
          b"535 5.7.8 bad\r\n", b"550-5.1.1 no\r\n", b"550 5.1.1 no\r\n", b"552 5.3.4 big\r\n",
          b"554 5.7.1 spam\r\n", b"421 4.4.2 bye\r\n", b"\r\n", b"\r", b"\n", b"-", b" ", b"250", b"2",
          b"\x00", b"x" * 100, b"9" * 2100]
USER, PASSWORD = b"alice", b"secret"
SECRETS = (b64(b"\0alice\0secret"), b64(USER), b64(PASSWORD))
STAGES = (b"CONNECT", b"GREETING", b"EHLO", b"TLS", b"AUTH", b"MAIL", b"RCPT", b"DATA", b"QUIT")
BODY = b"Subject: t\r\n\r\n.dot\nbare\r\r\n.\r\nend"

REPLIES = [t for t in TOKENS if t[:3].isdigit() and t.endswith(b"\r\n")] + [b"250 ok\r\n"] * 6 + [b"354 go\r\n"] * 2
EHLOS = [b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
         b"250 mx.test\r\n", b"502 5.5.1 no\r\n250 mx.test\r\n", b"250-mx.test\r\n250 STARTTLS\r\n",
         b"250-mx.test\r\n250-AUTH=LOGIN\r\n250 SIZE\r\n"]
random_streams = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=8)), max_size=40).map(b"".join)
# A plausible dialogue (greeting, an EHLO reply, replies) with a random tail reaches the transaction.
plausible_streams = st.tuples(st.sampled_from([b"220 mx.test ESMTP\r\n", b""]), st.sampled_from(EHLOS),
                              st.lists(st.sampled_from(REPLIES), max_size=25).map(b"".join),
                              st.one_of(st.just(b""), st.binary(max_size=6))).map(b"".join)
streams = st.one_of(random_streams, plausible_streams)
cut_lists = st.lists(st.integers(min_value=0, max_value=5000), max_size=12)
configs = st.fixed_dictionaries({
    "tls": st.sampled_from(TLS_MODES),
    "auth": st.sampled_from([None, (USER, PASSWORD)]),
    "size": st.sampled_from([None, 10, 5000]),
    "eight_bit": st.booleans(),
    "nrcpt": st.integers(min_value=1, max_value=3),
    "ending": st.sampled_from(["none", "eof", "timeout", "tls_failed"]),
})


def split(data, cuts):
    """data cut at the given offsets into non-empty pieces (b"" would mean end of stream)."""
    cuts = sorted(set(c % (len(data) + 1) for c in cuts))
    out, prev = [], 0
    for c in cuts + [len(data)]:
        if c > prev:
            out.append(data[prev:c])
        prev = c
    return out


def check_event(c, ev, cfg):
    kind = ev[0]
    if kind == "send":
        assert isinstance(ev[1], bytes) and ev[1].endswith(b"\r\n") and len(ev) == 2
        if any(s in ev[1] for s in SECRETS):
            assert c.tls_active, ev                       # XC2: never in clear
    elif kind == "rcpt":
        assert 0 <= ev[1] < cfg["nrcpt"] and 200 <= ev[2] <= 599 and b"\r" not in ev[3] and b"\n" not in ev[3]
    elif kind == "done":
        assert 200 <= ev[1] <= 599 and ev[1] // 100 != 3 and isinstance(ev[2], bytes) and b"\n" not in ev[2]
    elif kind == "error":
        assert ev[1] in STAGES and 400 <= ev[2] <= 599 and isinstance(ev[4], bool)
        assert isinstance(ev[3], bytes) and b"\r" not in ev[3] and b"\n" not in ev[3]
    else:
        assert ev in (("ready",), ("body",), ("starttls",), ("closed",)), ev


def drive(cfg, pieces_a, pieces_b):
    """Feed pieces_a until STARTTLS completes, then pieces_b; answer every event at once."""
    c = Client(b"pi.lan.example", tls=cfg["tls"], auth=cfg["auth"])
    log, sent, tls = [], [0], [False]

    def pump():
        while True:
            ev = c.next_event()
            if ev is None:
                return
            assert not log or log[-1] != ("closed",), (log, ev)
            check_event(c, ev, cfg)
            log.append(ev)
            if ev[0] == "ready":
                if sent[0] < 2:
                    sent[0] += 1
                    c.send_message(b"a@pi.lan.example", [b"r%d@x.test" % i for i in range(cfg["nrcpt"])],
                                   size=cfg["size"], eight_bit=cfg["eight_bit"])
                else:
                    c.quit()
            elif ev[0] == "body":
                log.append(("wire", c.body(BODY[:9]) + c.body(BODY[9:]) + c.body_end()))
            elif ev[0] == "starttls":
                tls[0] = True
                c.tls_started()

    for piece in pieces_a:
        c.receive(piece)
        pump()
        if tls[0]:
            break
    if tls[0]:
        for piece in pieces_b:
            c.receive(piece)
            pump()
    ending = cfg["ending"]
    if ending == "eof":
        c.receive(b"")
    elif ending == "timeout":
        c.timed_out()
    elif ending == "tls_failed":
        c.tls_failed("handshake")
    pump()
    assert c.last_error is None, repr(c.last_error)
    for i in range(len(log)):
        if log[i][0] == "error":
            assert log[i + 1] == ("closed",)
    return log


@SETTINGS
@given(configs, streams, streams, cut_lists, cut_lists)
def test_any_split_gives_the_same_events(cfg, a, b, cuts_a, cuts_b):
    whole = drive(cfg, [a] if a else [], [b] if b else [])
    assert drive(cfg, split(a, cuts_a), split(b, cuts_b)) == whole
    bytewise = drive(cfg, split(a, range(len(a))), split(b, range(len(b))))
    assert bytewise == whole


@SETTINGS
@given(configs, cut_lists)
def test_a_well_behaved_server_delivers(cfg, cuts):
    """A script that accepts everything, split anywhere: two messages done with 250 (or the local
    refusals), then QUIT; or an error only where the configuration demands one."""
    greet = b"220 mx.test ESMTP\r\n"
    ehlo = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"
    txn = b"250 ok\r\n" * (1 + cfg["nrcpt"]) + b"354 go\r\n250 2.0.0 queued\r\n"
    after = ehlo.replace(b"250-STARTTLS\r\n", b"") + (b"235 ok\r\n" if cfg["auth"] else b"") + txn * 2 + b"221 bye\r\n"
    cfg = dict(cfg, ending="none")
    if cfg["tls"] in ("opportunistic", "starttls"):
        a, b = greet + ehlo + b"220 go\r\n", after
    else:
        a, b = greet + after, b""
        if cfg["auth"] and cfg["tls"] == "none":
            a = greet + ehlo
    log = drive(cfg, split(a, cuts), split(b, cuts))
    assert log[-1] == ("closed",)
    if cfg["auth"] and cfg["tls"] == "none":
        assert log[-2][:2] == ("error", b"AUTH")
        return
    done = [e for e in log if e[0] == "done"]
    expect = 552 if cfg["size"] == 5000 else 250
    assert done == [done[0], done[0]] and done[0][1] == expect, log
    assert log[-3:] == [("ready",), ("send", b"QUIT\r\n"), ("closed",)]


body_streams = st.lists(st.one_of(st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"a", b"..", b" ",
                                                  b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"MAIL FROM:<x@y>"]),
                                  st.binary(max_size=5)), max_size=40).map(b"".join)


def oracle(body):
    norm = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    if norm and not norm.endswith(b"\r\n"):
        norm += b"\r\n"
    return norm, re.sub(rb"(?m)^\.", b"..", norm) + b".\r\n"


@SETTINGS
@given(body_streams, cut_lists)
def test_body_encoding_matches_the_oracle_for_any_chunking(body, cuts):
    norm, wire = oracle(body)
    enc = BodyEncoder()
    out = b"".join(enc.feed(p) for p in split(body, cuts) + [b""]) + enc.end()
    assert out == wire
    assert enc.size == len(out)
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")       # no stray CR or LF
    assert out.find(b"\r\n.\r\n") in (-1, len(out) - 5) and (out == b".\r\n" or not out.startswith(b".\r\n"))


@SETTINGS
@given(body_streams, cut_lists)
def test_server_session_receives_exactly_the_normalised_body(body, cuts):
    norm, _ = oracle(body)
    enc = BodyEncoder()
    wire = b"".join(enc.feed(p) for p in split(body, cuts)) + enc.end()
    s = Session(Policy(hostname="mx.test", max_message_size=0))
    s.greeting()
    s.receive(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n" + wire + b"QUIT\r\n")
    got, ends = None, 0
    while True:
        ev = s.next_event()
        if ev is None:
            break
        if ev[0] == "mail":
            s.accept_mail()
        elif ev[0] == "rcpt":
            s.accept_rcpt()
        elif ev[0] == "data_start":
            got = b""
        elif ev[0] == "body":
            got += ev[1]
        elif ev[0] == "data_end":
            ends += 1
            s.message_accepted("Q")
        assert ev[0] != "data_abort", body
    assert ends == 1 and got == norm
