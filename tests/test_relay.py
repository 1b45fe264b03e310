"""Issue 4, relay over MX (routing) against real peers on loopback: a private dnsmasq for DNS (the
only DNS any of this asks) and Postfix's smtp-sink as the MX hosts, all on 127.0.0.x.

- MX records from dnsmasq lead to smtp-sink on 127.0.0.2;
- the lower-preference MX takes the mail when the first one (127.0.0.3, nothing listening) is down;
- implicit MX: a domain with only an A record;
- null MX and NXDOMAIN bounce without any connection: the DSN goes to the sender's own MX (a
  capture sink on 127.0.0.4) and reads as a valid RFC 3464 report;
- a DNS timeout defers: the message stays, no bounce;
- one message for three domains: each group on its own (delivered, bounced, delivered via backup);
- opportunistic STARTTLS to an MX host that offers it (aiosmtpd on 127.0.0.6);
- end to end, swaks -> tinymta -> smtp-sink, the message arrives byte for byte apart from the one
  Received field tinymta adds (and smtp-sink's own dump lines).

The smarthost, per-recipient, broken-link, crash and expiry cases are in test_relay_*.py.
"""
import time

from mtaproc import strip_added
from relaykit import (message, needs, parse_dsn, pending, peers, relay_mx, send,  # noqa: F401
                      strip_sink, wait_for)
from serverkit import make_cert, run

pytestmark = needs("smtp-sink", "dnsmasq")

MAIN, DOWN, CAPTURE, TLSHOST = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.6"
SENDER = "alice@client.test"


def mx_world(peers, **extra):
    """dnsmasq with the test domains; smtp-sinks on MAIN and CAPTURE (nothing listens on DOWN)."""
    dns = peers.dns(
        mx=[("example.test", "mx1.example.test", 10),
            ("backup.test", "mx1.backup.test", 10), ("backup.test", "mx2.backup.test", 20),
            ("client.test", "mx.client.test", 10), ("tls.test", "mx.tls.test", 10)],
        hosts={"mx1.example.test": MAIN, "mx1.backup.test": DOWN, "mx2.backup.test": MAIN,
               "implicit.test": MAIN, "mx.client.test": CAPTURE, "mx.tls.test": TLSHOST},
        null_mx=["nullmx.test"], **extra)
    return dns, peers.smtp_sink(MAIN), peers.smtp_sink(CAPTURE)


def delivered_once(sink, msg, sender=SENDER, rcpts=None):
    """Exactly one dump on sink: msg byte for byte after smtp-sink's lines and tinymta's Received."""
    wait_for(lambda: sink.counters()["mesg"] >= 1, 15, "the sink to receive the message")
    time.sleep(0.3)                          # nothing else may follow
    dumps = sink.dumps()
    assert len(dumps) == 1, dumps
    body = strip_sink(dumps[0])
    assert body.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mta.test (tinymta)"), body[:200]
    assert strip_added(body) == msg
    assert b"X-Mail-Args: <%s>" % sender.encode() in dumps[0]
    for r in rcpts or ():
        assert b"X-Rcpt-Args: <%s>" % r.encode() in dumps[0], dumps[0][:400]
    return dumps[0]


def test_mx_delivery_through_dnsmasq_records(peers):
    dns, sink, capture = mx_world(peers)
    mta = peers.mta(relay=relay_mx(dns, peers.port))
    msg = message("mx1", rcpt="bob@example.test")
    send(mta, SENDER, ["bob@example.test"], msg)
    delivered_once(sink, msg, rcpts=["bob@example.test"])
    wait_for(lambda: "status=sent" in mta.log(), 5, "the log line")
    mta.stop()
    log = mta.log()
    assert "to=<bob@example.test>, relay=mx1.example.test[127.0.0.2]:%d, status=sent" % peers.port in log, log
    assert pending(mta) == []
    q = dns.queries()
    assert ("MX", "example.test") in q and ("A", "mx1.example.test") in q, q
    assert capture.counters()["sess"] == 0 and capture.dumps() == []


def test_lower_preference_mx_takes_over_when_the_first_is_down(peers):
    dns, sink, capture = mx_world(peers)
    mta = peers.mta(relay=relay_mx(dns, peers.port))
    msg = message("backup", rcpt="carol@backup.test")
    send(mta, SENDER, ["carol@backup.test"], msg)
    delivered_once(sink, msg, rcpts=["carol@backup.test"])
    wait_for(lambda: "status=sent" in mta.log(), 5, "the log line")
    mta.stop()
    log = mta.log()
    first = "relay=mx1.backup.test[127.0.0.3]:%d, stage=CONNECT, status=deferred" % peers.port
    sent = "to=<carol@backup.test>, relay=mx2.backup.test[127.0.0.2]:%d, status=sent" % peers.port
    assert first in log and sent in log and log.index(first) < log.index(sent), log
    assert log.count("status=sent") == 1 and "bounced" not in log, log
    assert pending(mta) == []


def test_implicit_mx_uses_the_a_record(peers):
    dns, sink, capture = mx_world(peers)
    mta = peers.mta(relay=relay_mx(dns, peers.port))
    msg = message("implicit", rcpt="dave@implicit.test")
    send(mta, SENDER, ["dave@implicit.test"], msg)
    delivered_once(sink, msg, rcpts=["dave@implicit.test"])
    wait_for(lambda: "status=sent" in mta.log(), 5, "the log line")
    mta.stop()
    assert "to=<dave@implicit.test>, relay=implicit.test[127.0.0.2]:%d, status=sent" % peers.port in mta.log()
    q = dns.queries()
    assert ("MX", "implicit.test") in q and ("A", "implicit.test") in q, q


def test_null_mx_and_nxdomain_bounce_without_connecting(peers):
    dns, sink, capture = mx_world(peers)
    mta = peers.mta(relay=relay_mx(dns, peers.port))
    msg = message("nowhere", rcpt="erin@nullmx.test")
    send(mta, SENDER, ["erin@nullmx.test", "frank@nx.test"], msg)
    wait_for(lambda: capture.counters()["mesg"] >= 1, 15, "the DSN at the sender's MX")
    time.sleep(0.5)
    mta.stop()
    assert sink.counters()["sess"] == 0 and sink.dumps() == [], "a connection reached the MX sink"
    dumps = capture.dumps()
    assert len(dumps) == 1 and capture.counters()["sess"] == 1, dumps
    assert b"X-Mail-Args: <>" in dumps[0] and b"X-Rcpt-Args: <%s>" % SENDER.encode() in dumps[0]
    dsn, rcpts = parse_dsn(strip_sink(dumps[0]))
    by = dict((r["final-recipient"].split(";")[1].strip(), r) for r in rcpts)
    assert set(by) == {"erin@nullmx.test", "frank@nx.test"}, rcpts
    assert by["erin@nullmx.test"]["action"] == "failed" and by["erin@nullmx.test"]["status"] == "5.1.10", by
    assert by["frank@nx.test"]["action"] == "failed" and by["frank@nx.test"]["status"] == "5.1.2", by
    assert SENDER in str(dsn["To"]) and dsn["From"].addresses[0].username == "MAILER-DAEMON", (dsn["To"], dsn["From"])
    headers = dsn.get_payload()[2]                 # part 3: the original header section
    assert headers.get_content_type() == "text/rfc822-headers", headers.get_content_type()
    assert b"Message-ID: <nowhere@client.test>" in headers.as_bytes(), headers.as_bytes()
    assert pending(mta) == []                  # original and DSN both done
    q = dns.queries()
    assert ("MX", "nullmx.test") in q and ("MX", "nx.test") in q, q
    assert not [x for x in q if x[1] in ("nullmx.test", "nx.test") and x[0] != "MX"], q   # no A fallback


def test_dns_timeout_defers_without_bounce(peers):
    dns, sink, capture = mx_world(peers, timeout=["timeout.test"])
    # one attempt in the test's time: the lookup blocks for the resolver's lifetime
    mta = peers.mta(relay=relay_mx(dns, peers.port, retry_min=60, retry_max=60))
    send(mta, SENDER, ["gina@timeout.test"], message("slowdns", rcpt="gina@timeout.test"))
    wait_for(lambda: "stage=DNS" in mta.log(), 30, "the DNS failure in the log")
    mta.stop()
    log = mta.log()
    assert "relay=timeout.test, stage=DNS, status=deferred (4.4.3" in log, log
    assert "bounced" not in log and "non-delivery" not in log, log
    assert pending(mta) == [(SENDER, ["gina@timeout.test"])]
    assert sink.counters()["sess"] == 0 and capture.counters()["sess"] == 0


def test_one_message_three_domains(peers):
    dns, sink, capture = mx_world(peers)
    mta = peers.mta(relay=relay_mx(dns, peers.port))
    msg = message("three", rcpt="bob@example.test")
    send(mta, SENDER, ["bob@example.test", "erin@nullmx.test", "carol@backup.test"], msg)
    wait_for(lambda: sink.counters()["mesg"] >= 2 and capture.counters()["mesg"] >= 1, 15, "2 deliveries, 1 DSN")
    time.sleep(0.5)
    mta.stop()
    dumps = sink.dumps()
    assert len(dumps) == 2 and all(strip_added(strip_sink(d)) == msg for d in dumps), dumps
    rcpt_args = sorted(d.split(b"X-Rcpt-Args: ", 1)[1].split(b"\n", 1)[0] for d in dumps)
    assert rcpt_args == [b"<bob@example.test>", b"<carol@backup.test>"], rcpt_args
    dsn, rcpts = parse_dsn(strip_sink(capture.dumps()[0]))
    assert [(r["final-recipient"], r["status"]) for r in rcpts] == [("rfc822; erin@nullmx.test", "5.1.10")], rcpts
    assert pending(mta) == []


@needs("openssl")
def test_opportunistic_starttls_to_an_mx_that_offers_it(peers, tmp_path):
    d = tmp_path / "tls"
    d.mkdir()
    dns, sink, capture = mx_world(peers)
    aio = peers.aio_sink(TLSHOST, tls="starttls", cert=make_cert(d))      # cert for 127.0.0.x, not mx.tls.test:
    mta = peers.mta(relay=relay_mx(dns, peers.port, tls="opportunistic"))  # MX TLS is not verified (RFC 3207)
    msg = message("starttls", rcpt="hal@tls.test")
    send(mta, SENDER, ["hal@tls.test"], msg)
    got = wait_for(aio.messages, 15, "the message at the TLS MX")
    mta.stop()
    assert len(got) == 1 and got[0].tls and got[0].rcpts == ["hal@tls.test"] and got[0].content.endswith(msg), got
    assert pending(mta) == []


@needs("swaks")
def test_end_to_end_swaks_to_smtp_sink_byte_exact(peers):
    dns, sink, capture = mx_world(peers)
    mta = peers.mta(relay=relay_mx(dns, peers.port))
    body = (b"Plain line.\r\n"
            b".leading dot\r\n"
            b"..two dots\r\n"
            b".\r\n"                                   # a lone dot inside the content
            b" . \r\n"
            b"\r\n\r\n"
            b"trailing spaces and a tab   \t\r\n"
            b"From the start of a line\r\n"
            + b"x" * 990 + b"\r\n"                     # near the 998 limit
            + b"".join(b"line %04d: %s\r\n" % (i, b"abcdefghij" * 7) for i in range(3000))   # ~250 KB
            + b"last line\r\n")
    msg = message("swaks-e2e", rcpt="bob@example.test", body=body)
    # swaks turns LF into CRLF and adds CRLF.CRLF itself: give it the message without its last CRLF
    p = run(["swaks", "--server", "127.0.0.1:%d" % mta.port, "--ehlo", "client.test", "--from", SENDER,
             "--to", "bob@example.test", "--timeout", "10", "--data", "-"], msg[:-2], timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    delivered_once(sink, msg, rcpts=["bob@example.test"])
    mta.stop()
    assert pending(mta) == []
