"""Issue 3's server requirements against real clients and a real `python -m tinymta serve` child.

Each client (swaks, curl, msmtp, Python smtplib, a raw socket) gets 250, and the spooled message is
the one the client sent, byte for byte, apart from the Received field tinymta prepends (complete
messages with From, Date and Message-ID, so nothing else is added).  Then: the Received field
(protocol.md T1-T3), the submission fix-ups for a sensor message without Date/Message-ID/From
(T7, D1-D3), relay policy (P1, A5; DESIGN invariant 6), a full spool (invariant 3, X1) and SIGTERM
in the middle of a session (G23).  A client whose binary is missing is skipped; nothing else is.
"""
import os
import re
import shutil
import smtplib
import ssl

import pytest

from mtaproc import MTA, strip_added
from serverkit import (PASSWORD, USER, Wire, assert_spool_clean, check_date, complete_message, needs, parse_received,
                       queued_id, run, stuff, tls_server)

SENDER, RCPT = "alice@client.test", "bob@example.test"


@pytest.fixture
def tls(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return tls_server(tmp_path)


def only_message(mta, msg, proto, sender=SENDER, rcpts=(RCPT,), helo="client.test", ip="127.0.0.1", qid=None):
    """After mta.stop(): exactly one message, byte-exact apart from a well-formed Received field."""
    got = mta.messages()
    assert len(got) == 1, got
    s, r, body = got[0]
    assert (s, r) == (sender, list(rcpts))
    assert strip_added(body) == msg, (body, msg)
    rec = parse_received(body)
    assert rec["proto"] == proto and rec["helo"] == helo and rec["ip"] == ip and rec["by"] == "mta.test", rec
    assert rec["for"] == (rcpts[0] if len(rcpts) == 1 else None), rec
    if qid is not None:
        assert rec["id"] == qid, (rec, qid)
    return rec


# ---- swaks --------------------------------------------------------------------------------------

def swaks(mta, msg, *extra, **kw):
    """swaks sends its --data with LF -> CRLF and appends CRLF.CRLF: give it msg without the last CRLF."""
    cmd = ["swaks", "--server", "127.0.0.1:%d" % mta.port, "--ehlo", "client.test", "--from", kw.get("sender", SENDER),
           "--to", kw.get("to", RCPT), "--timeout", "10", "--data", "-"] + list(extra)
    p = run(cmd, msg[:-2], timeout=30)
    return p.returncode, p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")


@needs("swaks")
@pytest.mark.parametrize("pipeline", [False, True], ids=["plain", "pipeline"])
def test_swaks_plain(tmp_path, pipeline):
    msg = complete_message(tag="swaks")
    with MTA(tmp_path) as mta:
        rc, out = swaks(mta, msg, *(["--pipeline"] if pipeline else []))
        assert rc == 0 and "250 2.0.0 Ok: queued as" in out, out
    if pipeline:    # MAIL, RCPT and DATA went out before their replies came back
        assert re.search(r"-> MAIL FROM:.*\n -> RCPT TO:.*\n -> DATA\n<-  250 2\.1\.0", out), out
    only_message(mta, msg, "ESMTP", qid=re.search(r"queued as (\w+)", out).group(1))


@needs("swaks")
@pytest.mark.parametrize("auth", [None, "PLAIN", "LOGIN"])
def test_swaks_starttls(tmp_path, tls, auth):
    msg = complete_message(tag="swaks-tls")
    extra = ["--tls", "--tls-verify", "--tls-ca-path", tls["tls_cert"], "--pipeline"]   # checks the IP SAN
    if auth:
        extra += ["--auth", auth, "--auth-user", USER, "--auth-password", PASSWORD]
    with MTA(tmp_path, server=tls) as mta:
        rc, out = swaks(mta, msg, *extra)
        assert rc == 0 and "TLS started" in out and "250 2.0.0 Ok: queued as" in out, out
        if auth:
            assert "235 2.7.0" in out, out
    only_message(mta, msg, "ESMTPSA" if auth else "ESMTPS")
    if auth:
        assert "AUTH %s user=%s ok" % (auth, USER) in mta.log()


@needs("swaks")
@pytest.mark.parametrize("auth", ["PLAIN", "LOGIN"])
def test_swaks_wrong_password(tmp_path, tls, auth):
    with MTA(tmp_path, server=tls) as mta:
        rc, out = swaks(mta, complete_message(), "--tls", "--auth", auth, "--auth-user", USER,
                        "--auth-password", "wrong " + PASSWORD)
        assert rc == 28, out                            # swaks: authentication failed
        assert "535 5.7.8" in out and "MAIL FROM" not in out, out
    assert mta.messages() == []
    assert "AUTH %s user=%s failed" % (auth, USER) in mta.log()


# ---- curl ---------------------------------------------------------------------------------------

@needs("curl")
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "ssl-reqd-auth"])
def test_curl(tmp_path, secure, request):
    msg = complete_message(tag="curl")
    path = tmp_path / "msg.eml"
    path.write_bytes(msg)
    server = request.getfixturevalue("tls") if secure else None
    with MTA(tmp_path, server=server) as mta:
        cmd = ["curl", "-sS", "--max-time", "20", "--url", "smtp://127.0.0.1:%d/client.test" % mta.port,
               "--mail-from", SENDER, "--mail-rcpt", RCPT, "--upload-file", str(path)]
        if secure:
            cmd += ["--ssl-reqd", "--cacert", server["tls_cert"], "--user", "%s:%s" % (USER, PASSWORD)]
        p = run(cmd, timeout=30)
        assert p.returncode == 0, p.stderr
    only_message(mta, msg, "ESMTPSA" if secure else "ESMTP")


# ---- Python smtplib -----------------------------------------------------------------------------

def test_smtplib_plain_keeps_existing_trace_fields(tmp_path):
    older = b"Received: from sensor7 ([10.0.0.7])\r\n\tby gw.client.test; Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    msg = older + complete_message(tag="smtplib", extra=b"X-Reading: 21.5\r\n")
    with MTA(tmp_path) as mta:
        with smtplib.SMTP("127.0.0.1", mta.port, local_hostname="client.test", timeout=10) as s:
            assert s.sendmail(SENDER, [RCPT], msg) == {}
    rec = only_message(mta, msg, "ESMTP")          # T1: the old Received field is still there, unchanged
    assert mta.messages()[0][2].count(b"Received: ") == 2 and rec["rest"] == "R"


def test_smtplib_starttls_login(tmp_path, tls):
    msg = complete_message(tag="smtplib-tls")
    ctx = ssl.create_default_context(cafile=tls["tls_cert"])     # verifies the IP SAN 127.0.0.1
    with MTA(tmp_path, server=tls) as mta:
        with smtplib.SMTP("127.0.0.1", mta.port, local_hostname="client.test", timeout=10) as s:
            s.ehlo()
            assert not s.has_extn("auth")               # AUTH only after STARTTLS
            assert s.starttls(context=ctx)[0] == 220
            s.ehlo()
            assert not s.has_extn("starttls") and "LOGIN" in s.esmtp_features["auth"]
            s.login(USER, PASSWORD)
            assert s.sendmail(SENDER, [RCPT], msg) == {}
    only_message(mta, msg, "ESMTPSA")


# ---- msmtp --------------------------------------------------------------------------------------

MSMTPRC = """defaults
logfile {d}/msmtp.log
syslog off
timeout 10
account plain
host 127.0.0.1
port {port}
domain client.test
from {sender}
tls off
auth off
account tlsauth
host 127.0.0.1
port {port}
domain client.test
from {sender}
tls on
tls_starttls on
tls_trust_file {cert}
auth {mech}
user {user}
password {password}
account default : plain
"""


@needs("msmtp")
@pytest.mark.parametrize("account", ["plain", "tlsauth"])
def test_msmtp(tmp_path, account, request):
    msg = complete_message(tag="msmtp")
    server = request.getfixturevalue("tls") if account == "tlsauth" else None
    with MTA(tmp_path, server=server) as mta:
        rc = tmp_path / "msmtprc"
        rc.write_text(MSMTPRC.format(d=tmp_path, port=mta.port, sender=SENDER, user=USER, password=PASSWORD,
                                     mech="plain", cert=(server or {}).get("tls_cert", "/nonexistent")))
        os.chmod(str(rc), 0o600)
        p = run(["msmtp", "-C", str(rc), "-a", account, RCPT], msg, timeout=30)
        assert p.returncode == 0, p.stderr
    only_message(mta, msg, "ESMTPSA" if account == "tlsauth" else "ESMTP")
    assert "smtpstatus=250" in (tmp_path / "msmtp.log").read_text()


# ---- the Received field (T1-T3) -----------------------------------------------------------------

def raw_send(port, msg, rcpts=(RCPT,), sender=SENDER, hello=b"EHLO client.test", source=None):
    """One message over a raw socket; returns the queue id from the 250."""
    with Wire(port, source=source) as w:
        assert w.reply()[0] == 220
        w.expect(hello, 250)
        w.expect(b"MAIL FROM:<%s>" % sender.encode(), 250)
        for r in rcpts:
            w.expect(b"RCPT TO:<%s>" % r.encode(), 250)
        w.expect(b"DATA", 354)
        w.send(stuff(msg))
        code, lines = w.reply()
        assert code == 250, lines
        w.expect(b"QUIT", 221)
        return queued_id(lines)


def test_received_for_only_with_one_recipient_and_smtp_after_helo(tmp_path):
    one, two = complete_message(tag="one"), complete_message(tag="two")
    with MTA(tmp_path) as mta:
        id1 = raw_send(mta.port, one)
        id2 = raw_send(mta.port, two, rcpts=(RCPT, "carol@example.test"), hello=b"HELO sensor-3.lan")
    (_, r1, b1), (_, r2, b2) = mta.messages()
    assert strip_added(b1) == one and strip_added(b2) == two
    rec1, rec2 = parse_received(b1), parse_received(b2)
    assert (rec1["for"], rec1["proto"], rec1["id"], rec1["helo"]) == (RCPT, "ESMTP", id1, "client.test")
    assert (rec2["for"], rec2["proto"], rec2["id"], rec2["helo"]) == (None, "SMTP", id2, "sensor-3.lan")
    assert b"for <" not in b2.split(b"\r\n\t", 3)[2] and r2 == [RCPT, "carol@example.test"]


def test_received_esmtpa_without_tls(tmp_path, tls):
    server = {"auth_users_file": tls["auth_users_file"], "auth_without_tls": True}
    msg = complete_message(tag="esmtpa")
    with MTA(tmp_path, server=server) as mta:
        with smtplib.SMTP("127.0.0.1", mta.port, local_hostname="client.test", timeout=10) as s:
            s.login(USER, PASSWORD)
            s.sendmail(SENDER, [RCPT], msg)
    only_message(mta, msg, "ESMTPA")


# ---- submission fix-ups (T7, D1-D3) -------------------------------------------------------------

def test_sensor_message_gets_date_message_id_and_from(tmp_path):
    bare_headers = b"Subject: temperature\r\nX-Sensor: attic\r\n\r\ntemp=21.5\r\n.5 dot line\r\n"
    no_headers = b"temp=22.0 alarm\r\n"
    with MTA(tmp_path) as mta:
        raw_send(mta.port, bare_headers, sender="sensor@client.test")
        raw_send(mta.port, no_headers, sender="")             # null sender: From names the MTA
        with smtplib.SMTP("127.0.0.1", mta.port, local_hostname="client.test", timeout=10) as s:
            s.sendmail("cam@client.test", [RCPT], b"Subject: motion\r\n\r\nframe 1\r\n")
    msgs = mta.messages()
    assert [m[0] for m in msgs] == ["sensor@client.test", "", "cam@client.test"]
    expect = [(bare_headers, b"<sensor@client.test>"), (no_headers, b"<MAILER-DAEMON@mta.test>"),
              (b"Subject: motion\r\n\r\nframe 1\r\n", b"<cam@client.test>")]
    for (_, _, body), (sent, frm) in zip(msgs, expect):
        rec = parse_received(body)
        stored = strip_added(body)
        head, _, text = stored.partition(b"\r\n\r\n")
        fields = head.split(b"\r\n")
        added = [f for f in fields if f.split(b":")[0].lower() in (b"date", b"message-id", b"from")]
        assert [f.split(b":")[0] for f in added] == [b"Date", b"Message-ID", b"From"], fields
        when = check_date(added[0][len(b"Date: "):].decode())
        assert abs((when - rec["when"]).total_seconds()) <= 2, (when, rec)
        assert re.match(rb"^Message-ID: <[^<>@\s]+@mta\.test>$", added[1]), added[1]
        assert rec["id"].lower() in added[1].decode().lower()
        assert added[2] == b"From: " + frm
        # existing fields unchanged and in order, then the added ones, then the body as sent
        if sent.startswith(b"Subject"):
            sent_head, _, sent_text = sent.partition(b"\r\n\r\n")
            assert fields == sent_head.split(b"\r\n") + added and text == sent_text
        else:
            assert fields == added and text == sent
    assert mta.log().count("added=Date+Message-ID+From") == 3


# ---- relay policy (P1, A5) ----------------------------------------------------------------------

def test_relay_denied_outside_relay_networks(tmp_path, tls):
    server = dict(tls, relay_networks=["127.0.0.1/32"])
    msg = complete_message(tag="relay")
    with MTA(tmp_path, server=server) as mta:
        with Wire(mta.port, source="127.0.0.2") as w:
            w.ehlo()
            w.expect(b"MAIL FROM:<%s>" % SENDER.encode(), 250)
            code, lines = w.cmd(b"RCPT TO:<%s>" % RCPT.encode())
            assert lines == [b"550 5.7.1 Relay access denied"], lines
            w.expect(b"DATA", 554)                                  # no valid recipients: no 354
            w.expect(b"RCPT TO:<Postmaster@MTA.test>", 250)          # A5: postmaster always
            w.expect(b"RCPT TO:<postmaster>", 250)
            w.expect(b"DATA", 354)
            w.send(stuff(msg))
            assert w.reply()[0] == 250
            w.expect(b"QUIT", 221)
        if shutil.which("swaks"):
            rc, out = swaks(mta, msg, "--local-interface", "127.0.0.2")
            assert rc == 24 and "550 5.7.1 Relay access denied" in out, out   # 24: no RCPT accepted
        # TLS alone grants nothing; the same client may relay once authenticated (over TLS)
        ctx = ssl.create_default_context(cafile=tls["tls_cert"])
        with smtplib.SMTP("127.0.0.1", mta.port, local_hostname="client.test", timeout=10,
                          source_address=("127.0.0.2", 0)) as s:
            s.starttls(context=ctx)
            s.ehlo()
            assert s.mail(SENDER)[0] == 250
            assert s.rcpt(RCPT) == (550, b"5.7.1 Relay access denied")
            assert s.rset()[0] == 250
            s.login(USER, PASSWORD)
            assert s.sendmail(SENDER, [RCPT], msg) == {}
    msgs = mta.messages()
    assert [(m[0], m[1]) for m in msgs] == [(SENDER, ["Postmaster@MTA.test", "postmaster"]), (SENDER, [RCPT])]
    assert all(strip_added(m[2]) == msg for m in msgs)
    rec = parse_received(msgs[1][2])
    assert rec["ip"] == "127.0.0.2" and rec["proto"] == "ESMTPSA"
    log = mta.log()
    assert "Relay access denied; auth=no" in log and "[127.0.0.2]" in log


def test_relay_domains(tmp_path):
    msg = complete_message(tag="domains")
    with MTA(tmp_path, server={"relay_domains": ["example.test"]}) as mta:
        with Wire(mta.port) as w:
            w.ehlo()
            w.expect(b"MAIL FROM:<%s>" % SENDER.encode(), 250)
            assert w.cmd(b"RCPT TO:<eve@elsewhere.test>")[1] == [b"550 5.7.1 Relay access denied"]
            assert w.cmd(b"RCPT TO:<eve@sub.example.test>")[1] == [b"550 5.7.1 Relay access denied"]
            w.expect(b"RCPT TO:<postmaster@mta.test>", 250)
            w.expect(b"RCPT TO:<Bob@EXAMPLE.test>", 250)
            w.expect(b"DATA", 354)
            w.send(stuff(msg))
            assert w.reply()[0] == 250
            w.expect(b"QUIT", 221)
    assert [(m[0], m[1], strip_added(m[2])) for m in mta.messages()] == [
        (SENDER, ["postmaster@mta.test", "Bob@EXAMPLE.test"], msg)]


def test_postmaster_goes_to_server_postmaster(tmp_path):
    msg = complete_message(tag="postmaster")
    with MTA(tmp_path, server={"postmaster": "admin@example.org", "relay_networks": ["127.0.0.1/32"]}) as mta:
        with Wire(mta.port, source="127.0.0.2") as w:             # even from outside relay_networks
            w.ehlo()
            w.expect(b"MAIL FROM:<%s>" % SENDER.encode(), 250)
            w.expect(b"RCPT TO:<postmaster>", 250)
            w.expect(b"RCPT TO:<PostMaster@mta.test>", 250)
            w.expect(b"DATA", 354)
            w.send(stuff(msg))
            assert w.reply()[0] == 250
            w.expect(b"MAIL FROM:<%s>" % SENDER.encode(), 250)
            w.expect(b"RCPT TO:<postmaster@elsewhere.test>", 550)   # only ours is ours
            w.expect(b"QUIT", 221)
    ((sender, rcpts, body),) = mta.messages()
    assert (sender, rcpts) == (SENDER, ["admin@example.org"]) and strip_added(body) == msg
    assert "recipient <postmaster> -> server.postmaster <admin@example.org>" in mta.log()


# ---- a full spool (invariant 3, X1) --------------------------------------------------------------

def test_spool_full_452_at_mail(tmp_path):
    spool = {"size": "64K", "sector_size": 4096, "prog_unit": 256}
    accepted = []
    with MTA(tmp_path, server={"max_message_size": "16K"}, spool=spool) as mta:
        with Wire(mta.port) as w:
            w.ehlo()
            assert w.cmd(b"MAIL FROM:<a@client.test> SIZE=16385")[1][0].startswith(b"552 5.3.4")
            w.expect(b"MAIL FROM:<a@client.test> SIZE=16384", 250)        # fits an empty spool
            w.expect(b"RSET", 250)
            big = complete_message(body=b"".join(b"%05d %s\r\n" % (i, b"x" * 64) for i in range(150)))

            def send(msg, size):
                """MAIL (with SIZE= when size) ... -> the MAIL reply, then the end-of-data reply."""
                param = b" SIZE=%d" % size if size else b""
                code, lines = w.cmd(b"MAIL FROM:<a@client.test>" + param)
                if code != 250:
                    return lines[0], None
                w.expect(b"RCPT TO:<b@example.test>", 250)
                w.expect(b"DATA", 354)
                w.send(stuff(msg))
                end = w.reply()[1][0]
                if end.startswith(b"250 "):
                    accepted.append(msg)
                return lines[0], end

            for i in range(20):             # declared sizes: 452 at MAIL once they no longer fit
                mail, end = send(big, len(big))
                if mail.startswith(b"452"):
                    break
                assert end.startswith(b"250 "), end
            assert mail == b"452 4.3.1 Insufficient system storage" and 2 <= i < 20, (i, mail)
            w.expect(b"RCPT TO:<b@example.test>", 503)              # the refused MAIL opened nothing
            w.expect(b"MAIL FROM:<a@client.test> SIZE=200", 250)    # a small one still fits
            w.expect(b"RSET", 250)
            for i in range(400):            # no SIZE=: fill up; end-of-data may say 452 too, never lose
                mail, end = send(complete_message(tag="small%d" % i), 0)
                if mail.startswith(b"452"):
                    break
                assert end.startswith((b"250 ", b"452 4.3.1")), end
            assert mail == b"452 4.3.1 Insufficient system storage", mail
            w.expect(b"NOOP", 250)
            w.expect(b"QUIT", 221)
    msgs = mta.messages()
    assert [strip_added(m[2]) for m in msgs] == accepted and len(accepted) > 2
    assert "refused: spool full" in mta.log()
    assert_spool_clean(mta.spool_path)


# ---- SIGTERM mid-session (G23) ------------------------------------------------------------------

def test_sigterm_mid_session_421_and_clean_exit(tmp_path):
    first = complete_message(tag="before")
    with MTA(tmp_path) as mta:
        raw_send(mta.port, first)
        in_data, idle = Wire(mta.port), Wire(mta.port)
        try:
            in_data.ehlo()
            in_data.expect(b"MAIL FROM:<%s>" % SENDER.encode(), 250)
            in_data.expect(b"RCPT TO:<%s>" % RCPT.encode(), 250)
            in_data.expect(b"DATA", 354)
            in_data.send(complete_message(tag="cut", body=b"half a body\r\n" * 700)[:-7])
            idle.ehlo()
            idle.expect(b"NOOP", 250)       # the loop has served both
            rc = mta.stop()
            assert rc == 0, mta.log()
            for w in (in_data, idle):
                code, lines = w.reply()
                assert code == 421 and lines[0].startswith(b"421 4.3.2"), lines
                assert w.replies_until_close() == []
        finally:
            in_data.close()
            idle.close()
    assert [strip_added(m[2]) for m in mta.messages()] == [first]
    log = mta.log()
    assert "signal 15: stopping" in log and log.rstrip().endswith("stopped") and "Traceback" not in log
    assert_spool_clean(mta.spool_path)
    # and it starts again on the same spool with the message still there
    with MTA(tmp_path) as again:
        pass
    assert [strip_added(m[2]) for m in again.messages()] == [first]
