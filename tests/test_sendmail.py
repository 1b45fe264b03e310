"""`tinymta sendmail` as cron & co call it, against a real tinymta (CPython)."""
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from mtaproc import MTA, ROOT, free_port
from relaykit import SINK_IPS, needs, peers, relay_smarthost, wait_for  # noqa: F401 (peers: a fixture)

CRON_MSG = b"To: ops@example.org\nSubject: cron\n\nout\n.\nmore\n"


def run(args, data, cfg, env=None):
    e = dict(os.environ, PYTHONPATH=ROOT, LOGNAME="cronuser")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "tinymta", "sendmail"] + args + ["-c", cfg],
                          input=data, capture_output=True, timeout=60, env=e)


def header(body):
    return body.split(b"\r\n\r\n", 1)[0]


def test_cron_style_t_oi_f(tmp_path):
    with MTA(tmp_path) as mta:
        r = run(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-oi", "-t", "-f", "root"],
                CRON_MSG, mta.config_path)
        assert r.returncode == 0, r.stderr
        assert r.stderr == b""
        (sender, rcpts, body), = mta.messages()
    assert sender == "root@mta.test"
    assert rcpts == ["ops@example.org"]
    assert b"\n" not in body.replace(b"\r\n", b"")          # CRLF only
    assert body.endswith(b"\r\n\r\nout\r\n.\r\nmore\r\n")    # a lone dot does not end input
    assert b'From: "CronDaemon" <root@mta.test>' in header(body)
    assert b"Subject: cron\r\n" in body


def test_bcc_stripped_and_counted(tmp_path):
    msg = (b"From: app@example.org\nTo: a@example.org, B <b@example.org>\nCc: c@example.org\n"
           b"Bcc: hidden@example.org,\n  other@example.org\nSubject: x\n\nbody\n")
    with MTA(tmp_path) as mta:
        r = run(["-t", "-fbounce@example.org"], msg, mta.config_path)
        assert r.returncode == 0, r.stderr
        (sender, rcpts, body), = mta.messages()
    assert sender == "bounce@example.org"
    assert sorted(rcpts) == sorted(["a@example.org", "b@example.org", "c@example.org",
                                    "hidden@example.org", "other@example.org"])
    assert b"bcc" not in body.lower() and b"hidden" not in body and b"other@" not in body
    assert b"From: app@example.org\r\n" in body


def test_recipients_as_arguments_default_sender(tmp_path):
    with MTA(tmp_path) as mta:
        r = run(["-odi", "-bm", "x@example.org", "y@example.org"], b"Subject: hi\n\nbody\n",
                mta.config_path)
        assert r.returncode == 0, r.stderr
        (sender, rcpts, body), = mta.messages()
    assert sender == "cronuser@mta.test"
    assert rcpts == ["x@example.org", "y@example.org"]
    assert b"From: cronuser@mta.test\r\n" in header(body) + b"\r\n"


def test_cron_from_without_domain_gets_hostname(tmp_path):
    msg = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@box> run-parts\n\nhello\n"
    with MTA(tmp_path) as mta:
        r = run(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-oi", "-t"], msg, mta.config_path,
                env={"LOGNAME": "root"})
        assert r.returncode == 0, r.stderr
        (sender, rcpts, body), = mta.messages()
    assert sender == "root@mta.test"
    assert rcpts == ["root@mta.test"]
    assert b"From: root@mta.test (Cron Daemon)\r\n" in body


def test_mta_down_exit_75(tmp_path):
    m = MTA(tmp_path)
    m.start()
    m.stop()
    r = run(["-t"], CRON_MSG, m.config_path)
    assert r.returncode == 75
    assert r.stderr.startswith(b"tinymta: ") and r.stderr.count(b"\n") == 1


def test_too_big_exit_69(tmp_path):
    with MTA(tmp_path, server={"max_message_size": "1K"}) as mta:
        r = run(["-t"], CRON_MSG + b"x" * 4000 + b"\n", mta.config_path)
        assert r.returncode == 69, r.stderr
        assert r.stderr.startswith(b"tinymta: ") and r.stderr.count(b"\n") == 1
        assert b"552" in r.stderr
        assert mta.messages() == []


def test_4xx_exit_75(tmp_path):
    """A server answering 452 (spool full) to MAIL: a temporary failure."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve():
        c, _ = srv.accept()
        f = c.makefile("rwb")
        f.write(b"220 fake ESMTP\r\n")
        f.flush()
        for line in f:
            verb = line[:4].upper()
            if verb == b"EHLO":
                f.write(b"250-fake\r\n250 SIZE 100000\r\n")
            elif verb == b"MAIL":
                f.write(b"452 4.3.1 Insufficient system storage\r\n")
            elif verb == b"QUIT":
                f.write(b"221 bye\r\n")
                f.flush()
                break
            else:
                f.write(b"250 ok\r\n")
            f.flush()
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    cfg = tmp_path / "c.json"
    cfg.write_text('{"server": {"listen": ["127.0.0.1:%d"], "hostname": "h.test"}}' % port)
    r = run(["-t"], CRON_MSG, str(cfg))
    t.join(10)
    srv.close()
    assert r.returncode == 75, r.stderr
    assert b"452" in r.stderr and r.stderr.count(b"\n") == 1


@pytest.mark.parametrize("args,data", [([], b"Subject: x\n\nbody\n"),
                                       (["-t"], b"Subject: no recipients\n\nbody\n"),
                                       (["-Q", "a@example.org"], b"x\n"),
                                       (["-bp"], b"")])
def test_usage_exit_64(tmp_path, args, data):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"server": {"listen": ["127.0.0.1:%d"], "hostname": "h.test"}}' % free_port())
    r = run(args, data, str(cfg))
    assert r.returncode == 64, r.stderr
    assert r.stderr.startswith(b"tinymta: ") and r.stderr.count(b"\n") == 1


def test_cron_mail_is_queued_and_relayed(peers):
    """cron -> tinymta sendmail -t -> tinymta -> smtp-sink (the smarthost): the whole way."""
    needs("smtp-sink")
    sink = peers.smtp_sink(SINK_IPS[0])
    mta = peers.mta(relay=relay_smarthost(SINK_IPS[0], peers.port))
    r = run(["-FCronDaemon", "-i", "-t"], CRON_MSG, mta.config_path)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: sink.counters()["mesg"] == 1, 20, "the cron mail at the sink")
    (dump,) = sink.dumps()
    assert b"Subject: cron\n" in dump and dump.endswith(b"\n\nout\n.\nmore\n\n") and b"ops@example.org" in dump
    wait_for(lambda: not mta.messages(), 10, "the delivered mail acked in the spool")


def test_spool_full_exit_75_and_nothing_lost(tmp_path):
    """A real tinymta whose spool is full answers 452; sendmail exits 75 and the caller keeps the
    mail.  Once space is freed the same message goes through."""
    with MTA(tmp_path, spool={"size": 65536, "sector_size": 4096, "prog_unit": 256},
             server={"max_message_size": 16384}) as mta:
        import smtplib
        accepted, lines = 0, 100            # fill with ever smaller messages until even one line is refused
        with MTA.smtp(mta) as s:
            for _ in range(100):
                try:
                    s.sendmail("a@lan.example", ["b@example.org"],
                               b"Subject: filler\r\n\r\n" + (b"x" * 76 + b"\r\n") * lines)
                    accepted += 1
                except smtplib.SMTPResponseException as e:
                    assert e.smtp_code == 452, e
                    if lines == 1:
                        break
                    lines = max(1, lines // 2)
            else:
                raise AssertionError("the spool never filled")
        r = run(["-t"], CRON_MSG, mta.config_path)
        assert r.returncode == 75 and b"452" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
        assert len(mta.messages()) == accepted          # nothing accepted was lost, nothing half-stored
        q = subprocess.run([sys.executable, "-m", "tinymta", "mailq", "--json", "-c", mta.config_path],
                           capture_output=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
        ids = [m["queue_id"] for m in json.loads(q.stdout)["queue"]]
        subprocess.run([sys.executable, "-m", "tinymta", "delete"] + ids[:2] + ["-c", mta.config_path],
                       check=True, capture_output=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
        r = run(["-t"], CRON_MSG, mta.config_path)      # the caller's retry, with room again
        assert r.returncode == 0, r.stderr
        assert len(mta.messages()) == accepted - 1
