"""Issue 4, relay to a smarthost and per-recipient results, against real servers on 127.0.0.2:

- aiosmtpd (bench.md §4) with STARTTLS + AUTH, and with TLS from the first byte (port 465 style),
  its certificate checked against relay.ca_file; a wrong password defers (no bounce, the message
  stays, the error is logged); a certificate the CA file does not vouch for defers before any AUTH;
- one recipient refused with 451 and another accepted: the accepted one is delivered once, only
  the refused one is retried, and delivered when the server takes it;
- a 550 recipient: a DSN to the sender that Python's email parser reads as multipart/report with
  Action failed and Status 5.1.1, while the other recipient is delivered;
- a next hop that drops the connection in the middle of DATA: retried, delivered exactly once;
- a smarthost name with two addresses and TLS from the first byte: when the first address says
  421, the second one takes the mail at once;
- a smarthost name that does not resolve (the system resolver unreachable) defers; tinymta stays up.
"""
import os
import socket
import ssl
import threading
import time

import pytest

from relaykit import (USER, PASSWORD, message, needs, parse_dsn, pending, peers, relay_smarthost, send,  # noqa: F401
                      wait_for)
from serverkit import make_cert, run

pytestmark = needs("openssl")

HOP = "127.0.0.2"
SENDER = "alice@client.test"


@pytest.fixture
def cert(tmp_path):
    d = tmp_path / "tls"
    d.mkdir()
    return make_cert(d)


def password_file(peers, text):
    path = os.path.join(peers.tmp, "relay-password")
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


def tls_relay(peers, cert, tls, password=PASSWORD, ca=None):
    return relay_smarthost(HOP, peers.port, tls=tls, username=USER, password_file=password_file(peers, password),
                           ca_file=ca or cert[0])


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_smarthost_tls_and_auth(peers, cert, tls):
    aio = peers.aio_sink(HOP, auth=True, tls=tls, cert=cert)
    mta = peers.mta(relay=tls_relay(peers, cert, tls))
    msg = message("smarthost-" + tls, rcpt="bob@example.org")
    send(mta, SENDER, ["bob@example.org", "carol@example.net"], msg)
    got = wait_for(aio.messages, 15, "the message at the smarthost")
    time.sleep(0.3)
    mta.stop()
    got = aio.messages()
    assert len(got) == 1, got
    m = got[0]
    assert (m.sender, sorted(m.rcpts), m.tls, m.auth) == (SENDER, ["bob@example.org", "carol@example.net"], True, USER)
    assert m.content.endswith(msg) and m.content.startswith(b"Received: from client.test ([127.0.0.1])")
    log = mta.log()
    assert log.count("status=sent") == 2 and "deferred" not in log, log
    assert pending(mta) == []
    assert [e["ok"] for e in aio.events() if e["what"] == "auth"] == [True]


def test_wrong_password_defers_without_bounce(peers, cert):
    aio = peers.aio_sink(HOP, auth=True, tls="starttls", cert=cert)
    mta = peers.mta(relay=tls_relay(peers, cert, "starttls", password="not the password"))
    send(mta, SENDER, ["bob@example.org"], message("badpass", rcpt="bob@example.org"))
    wait_for(lambda: mta.log().count("stage=AUTH") >= 2, 15, "two refused AUTH attempts")
    mta.stop()
    log = mta.log()
    assert "relay=127.0.0.2[127.0.0.2]:%d, stage=AUTH, status=deferred (535" % peers.port in log, log
    assert "bounced" not in log and "non-delivery" not in log, log
    assert pending(mta) == [(SENDER, ["bob@example.org"])]      # still there, no DSN beside it
    assert aio.messages() == []
    assert [e["ok"] for e in aio.events() if e["what"] == "auth"][:2] == [False, False]


def test_untrusted_certificate_defers_before_auth(peers, cert, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca = make_cert(other)[0]           # a CA file that does not hold the server's certificate
    aio = peers.aio_sink(HOP, auth=True, tls="starttls", cert=cert)
    mta = peers.mta(relay=tls_relay(peers, cert, "starttls", ca=wrong_ca))
    send(mta, SENDER, ["bob@example.org"], message("badca", rcpt="bob@example.org"))
    wait_for(lambda: "stage=TLS" in mta.log(), 15, "the TLS failure")
    mta.stop()
    log = mta.log()
    assert "stage=TLS, status=deferred" in log and "certificate verify failed" in log, log
    assert "bounced" not in log, log
    assert pending(mta) == [(SENDER, ["bob@example.org"])]
    assert [e for e in aio.events() if e["what"] == "auth"] == [] and aio.messages() == []


def test_4xx_recipient_alone_is_retried_then_delivered(peers):
    aio = peers.aio_sink(HOP)
    mta = peers.mta(relay=relay_smarthost(HOP, peers.port))
    rcpts = ["tempfailonce@example.org", "ok@example.org"]
    msg = message("partial", rcpt="ok@example.org")
    send(mta, SENDER, rcpts, msg)
    wait_for(lambda: len(aio.messages()) >= 2, 20, "both deliveries")
    time.sleep(1.5)                                   # room for a wrong extra retry
    mta.stop()
    got = aio.messages()
    assert [m.rcpts for m in got] == [["ok@example.org"], ["tempfailonce@example.org"]], got
    assert all(m.content.endswith(msg) for m in got)
    verdicts = [(e["rcpt"], e["reply"][:3]) for e in aio.events() if e["what"] == "rcpt"]
    assert verdicts == [("tempfailonce@example.org", "451"), ("ok@example.org", "250"),
                        ("tempfailonce@example.org", "250")], verdicts
    log = mta.log()
    assert "stage=RCPT, status=deferred (451 4.3.0" in log and log.count("status=sent") == 2, log
    assert "bounced" not in log, log
    assert pending(mta) == []


def test_5xx_recipient_gets_a_valid_dsn(peers):
    aio = peers.aio_sink(HOP)
    mta = peers.mta(relay=relay_smarthost(HOP, peers.port))
    msg = message("reject", rcpt="ok@example.org")
    send(mta, SENDER, ["reject.me@example.org", "ok@example.org"], msg)
    wait_for(lambda: len(aio.messages()) >= 2, 20, "the message and the DSN")
    time.sleep(0.5)
    mta.stop()
    got = aio.messages()
    assert len(got) == 2, got
    orig = [m for m in got if m.sender == SENDER]
    dsns = [m for m in got if m.sender == ""]
    assert len(orig) == 1 and orig[0].rcpts == ["ok@example.org"] and orig[0].content.endswith(msg), got
    assert len(dsns) == 1 and dsns[0].rcpts == [SENDER], got
    dsn, rcpts = parse_dsn(dsns[0].content)
    assert len(rcpts) == 1, rcpts
    r = rcpts[0]
    assert r["final-recipient"] == "rfc822; reject.me@example.org", r
    assert r["action"] == "failed" and r["status"].startswith("5.") and r["status"] == "5.1.1", r
    assert "550 5.1.1 simulated permanent failure" in r["diagnostic-code"], r
    assert dsn.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert "ok@example.org" not in str(dsn.get_payload()[1]), "the delivered recipient is not reported"
    assert pending(mta) == []


def test_connection_dropped_in_data_is_retried_and_delivered_once(peers):
    drop = peers.drop_sink(HOP, drop_after=64 * 1024, drops=1)
    mta = peers.mta(relay=relay_smarthost(HOP, peers.port))
    body = b"".join(b"line %05d of a long message to cut in the middle\r\n" % i for i in range(6000))   # ~300 KB
    msg = message("dropped", rcpt="bob@example.org", body=body)
    send(mta, SENDER, ["bob@example.org"], msg)
    wait_for(drop.messages, 20, "the retried delivery")
    time.sleep(1.5)                                   # no second copy may follow
    mta.stop()
    got = drop.messages()
    assert len(got) == 1 and got[0].content.endswith(msg), got
    ev = [e["what"] for e in drop.events()]
    assert ev == ["dropped", "stored"], ev
    log = mta.log()
    assert "stage=DATA, status=deferred" in log and log.count("status=sent") == 1, log
    assert pending(mta) == []


def test_implicit_tls_second_address_after_a_421(peers, tmp_path):
    """The next address's connection must be watched for connect completion, not only for input:
    a TLS server says nothing before the client's hello (this stalled until relay.timeout)."""
    d = tmp_path / "pair"
    d.mkdir()
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    p = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pair.test",
             "-addext", "subjectAltName=DNS:pair.test", "-keyout", key, "-out", cert])
    assert p.returncode == 0, p.stderr
    first = socket.socket()
    first.bind(("127.0.0.6", peers.port))
    first.listen(4)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    seen = []

    def busy():                                  # TLS, then "421" and goodbye, once
        c, _ = first.accept()
        c.settimeout(10)
        try:
            with ctx.wrap_socket(c, server_side=True) as t:
                t.sendall(b"421 4.3.2 busy, try the next address\r\n")
                seen.append("421")
                time.sleep(0.2)
        except OSError as e:
            seen.append(repr(e))
    th = threading.Thread(target=busy, daemon=True)
    th.start()
    try:
        aio = peers.aio_sink(HOP, tls="implicit", cert=(cert, key))
        relay = relay_smarthost("pair.test", peers.port, tls="implicit", ca_file=cert, timeout=10, retry_min=60,
                                retry_max=60)
        mta = peers.mta(relay=relay, names={"pair.test": ["127.0.0.6", HOP]})
        t0 = time.time()
        send(mta, SENDER, ["bob@example.org"], message("pair", rcpt="bob@example.org"))
        got = wait_for(aio.messages, 15, "the delivery through the second address")
        took = time.time() - t0
        mta.stop()
        log = mta.log()
        assert seen == ["421"] and len(got) == 1 and got[0].tls, (seen, got)
        assert took < 5, (took, log)
        assert "relay=pair.test[127.0.0.6]:%d, stage=GREETING, status=deferred (421" % peers.port in log, log
        assert "relay=pair.test[127.0.0.2]:%d, status=sent" % peers.port in log, log
        assert pending(mta) == []
    finally:
        first.close()
        th.join(5)


def test_unresolvable_smarthost_defers_and_tinymta_stays_up(peers):
    """getaddrinfo's failure is a temporary one for the message, not the end of the server loop
    (it used to escape the loop: tinymta exited, and again at every restart)."""
    mta = peers.mta(relay=relay_smarthost("gone.test", peers.port), names={"gone.test": []})
    send(mta, SENDER, ["bob@example.org"], message("gone-1", rcpt="bob@example.org"))
    wait_for(lambda: mta.log().count("stage=DNS") >= 2, 10, "two deferrals")
    assert mta.proc.poll() is None, mta.log()
    send(mta, SENDER, ["carol@example.org"], message("gone-2", rcpt="carol@example.org"))   # intake goes on
    assert mta.stop() == 0
    log = mta.log()
    assert "relay=gone.test, stage=DNS, status=deferred (4.4.3" in log and "bounced" not in log, log
    assert pending(mta) == [(SENDER, ["bob@example.org"]), (SENDER, ["carol@example.org"])]
