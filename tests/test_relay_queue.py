"""Issue 4, the relay's queue against real peers on loopback (dnsmasq for MX, smtp-sink as next hops):

- SIGKILL in the middle of deliveries, several times over (30 messages queued with relay.mode
  "none", then tinymta restarted with MX delivery to a slow smtp-sink and killed again and again):
  every message arrives at least once and at most twice; none is lost;
- expiry: past relay.max_age with the next hop down, a DSN (Action failed, 4.4.7) goes to the
  sender; a message from <> that expires, or fails for good (550, null MX), gets none;
- the spool is written on delivery or bounce only: during repeated deferrals with no new mail, the
  tinymta process writes nothing but its log (/proc/PID/io wchar against the log file's growth,
  write_bytes, the spool file's mtime and hash, and `tinymta spool dump --json`'s wear counters).
"""
import collections
import hashlib
import json
import os
import random
import subprocess
import sys
import time

from relaykit import (message, message_id, needs, parse_dsn, pending, peers, proc_io, relay_mx, send,  # noqa: F401
                      strip_sink, wait_for)
from serverkit import ROOT, assert_spool_clean

pytestmark = needs("smtp-sink", "dnsmasq")

MAIN, DOWN, CAPTURE, REJECT = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
SENDER = "alice@client.test"


def world(peers):
    return peers.dns(
        mx=[("example.test", "mx1.example.test", 10), ("down.test", "mx.down.test", 10),
            ("client.test", "mx.client.test", 10), ("reject.test", "mx.reject.test", 10)],
        hosts={"mx1.example.test": MAIN, "mx.down.test": DOWN, "mx.client.test": CAPTURE,
               "mx.reject.test": REJECT},
        null_mx=["nullmx.test"])


def test_sigkill_during_deliveries_loses_nothing(peers):
    dns = world(peers)
    # a slow next hop: it stores a message 0.4 s after its final dot, then says 250 (smtp-sink -w
    # would do, but it sleeps for all its sessions at once: one message a second)
    sink = peers.aio_sink(MAIN, data_delay=0.4)
    n = 30
    intake = peers.mta()                               # relay.mode "none": mail only queues
    ids = []
    for i in range(n):
        msg = message("kill-%02d" % i, rcpt="u%02d@example.test" % i)
        send(intake, SENDER, ["u%02d@example.test" % i], msg)
        ids.append(message_id(msg))
    intake.stop()
    assert len(pending(intake)) == n
    rng = random.Random(4)
    relay = relay_mx(dns, peers.port)
    kills = 0
    for _ in range(5):              # each run gets a delivery done, then dies a moment later
        m = peers.mta(relay=relay)
        sent = m.log().count("status=sent")
        wait_for(lambda: m.log().count("status=sent") > sent, 20, "a delivery in this run")
        time.sleep(rng.uniform(0.05, 0.6))
        m.kill()
        kills += 1
    left = pending(m)
    assert 0 < len(left) < n, "the kills should fall between the first and the last delivery: %d left" % len(left)
    abandoned = len([e for e in sink.events() if e["what"] == "abandoned"])
    final = peers.mta(relay=relay)
    sent_before = final.log().count("status=sent")
    wait_for(lambda: final.log().count("status=sent") - sent_before >= len(left), 60, "the rest to be delivered")
    final.stop()
    assert pending(final) == []
    assert_spool_clean(final.spool_path)
    got = collections.Counter(message_id(m.content) for m in sink.messages())
    assert set(got) == set(ids), set(ids) ^ set(got)                     # none lost
    assert max(got.values()) <= 2, [k for k, v in got.items() if v > 2]  # at most twice
    # the kills did land in the middle of deliveries: the hop saw the client vanish after DATA
    assert abandoned >= kills // 2, (abandoned, kills)


def test_expiry_bounces_to_the_sender_but_never_to_null_sender(peers):
    dns = world(peers)
    capture = peers.smtp_sink(CAPTURE)
    reject = peers.smtp_sink(REJECT, "-f", "RCPT", "-B", "550 5.1.1 no such user")
    mta = peers.mta(relay=relay_mx(dns, peers.port, retry_min=1, retry_max=1, max_age=3))
    send(mta, SENDER, ["u@down.test"], message("expire", rcpt="u@down.test"))         # expires: DSN
    send(mta, "", ["v@down.test"], message("expire-null", rcpt="v@down.test"))         # expires: none
    send(mta, "", ["w@reject.test"], message("reject-null", rcpt="w@reject.test"))     # 550: none
    send(mta, "", ["x@nullmx.test"], message("nullmx-null", rcpt="x@nullmx.test"))     # null MX: none
    wait_for(lambda: mta.log().count("expired after") >= 2 and capture.counters()["mesg"] >= 1, 20,
             "both expiries and the DSN")
    time.sleep(1.5)                                   # a wrong second DSN would be on its way by now
    mta.stop()
    log = mta.log()
    assert log.count("status=bounced") == 4 and log.count("non-delivery notification") == 1, log
    assert pending(mta) == []
    dumps = capture.dumps()
    assert len(dumps) == 1 and b"X-Mail-Args: <>" in dumps[0] and b"X-Rcpt-Args: <%s>" % SENDER.encode() in dumps[0]
    dsn, rcpts = parse_dsn(strip_sink(dumps[0]))
    assert [(r["final-recipient"], r["action"], r["status"]) for r in rcpts] == [("rfc822; u@down.test", "failed",
                                                                                  "4.4.7")], rcpts
    assert b"Message-ID: <expire@client.test>" in dsn.get_payload()[2].as_bytes()
    assert "127.0.0.3" in rcpts[0].get("diagnostic-code", "") + str(dsn.get_payload()[0]), rcpts
    assert reject.counters()["sess"] >= 1 and reject.counters()["mesg"] == 0 and reject.dumps() == []


def _dump(path):
    p = subprocess.run([sys.executable, "-m", "tinymta", "spool", "dump", "--json", path], capture_output=True,
                       timeout=30, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout.decode().splitlines()[0])
    return d["erase_counts"], d["used"], d["head_seq"]


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_spool_is_not_written_while_deferring(peers):
    dns = world(peers)
    mta = peers.mta(relay=relay_mx(dns, peers.port, retry_min=1, retry_max=1))
    send(mta, SENDER, ["u@down.test", "v@down.test"], message("defer", rcpt="u@down.test"))
    wait_for(lambda: "stage=CONNECT, status=deferred" in mta.log(), 10, "the first deferral")
    time.sleep(0.3)
    pid = mta.proc.pid
    io0, log0, st0, sha0, dump0 = proc_io(pid), os.path.getsize(mta.log_path), os.stat(mta.spool_path), \
        _sha(mta.spool_path), _dump(mta.spool_path)
    tries0 = mta.log().count("stage=CONNECT, status=deferred")
    wait_for(lambda: mta.log().count("stage=CONNECT, status=deferred") - tries0 >= 4, 20, "4 more attempts")
    time.sleep(0.3)
    io1, log1, st1, sha1, dump1 = proc_io(pid), os.path.getsize(mta.log_path), os.stat(mta.spool_path), \
        _sha(mta.spool_path), _dump(mta.spool_path)
    tries = mta.log().count("stage=CONNECT, status=deferred") - tries0
    assert tries >= 4, mta.log()                                # it kept trying...
    grew = log1 - log0
    assert grew > 0 and io1["wchar"] - io0["wchar"] == grew, (io0, io1, grew)   # ...and wrote only its log
    assert io1["write_bytes"] - io0["write_bytes"] <= (grew // 4096 + 2) * 4096, (io0, io1, grew)
    assert (st1.st_mtime_ns, st1.st_size, sha1) == (st0.st_mtime_ns, st0.st_size, sha0)
    assert dump1 == dump0                                       # erase counts, bytes used, head
    mta.stop()
    assert pending(mta) == [(SENDER, ["u@down.test", "v@down.test"])]
