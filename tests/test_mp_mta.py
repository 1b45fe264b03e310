"""The whole MTA under the MicroPython unix port, started the way a board's main.py starts it.

`MICROPYPATH=<mpy dir> micropython -X heapsize=HEAP -m tinymta serve -c config.json`, where the
directory holds tinymta/*.mpy and the dns shim (firmware/micropython/lib/dns) as .mpy, compiled
by mpy-cross into the test's tmp_path, as they would be shipped to a board. Then:

  CPython smtplib -> tinymta on MicroPython -> smtp-sink, found through dnsmasq's MX records
  (relay.mode "mx", relay.dns_servers = the test's dnsmasq, relay.mx_port = the sink's port):

  - deferral and retry: the first message arrives while nothing listens at the MX host; it is
    deferred, and delivered by a retry once the sink is up (relay.retry_min 1 s);
  - power cut: with the sink down again, a second message is accepted (250) and deferred, then
    the process is SIGKILLed (the spool is a file-backed block device); restarted, it delivers
    that message; nothing is lost and the first one is not sent again.

HEAP is the smallest -X heapsize at which this passes, plus a margin (BENCHMARKS.md, "MicroPython
heap"): the test fails when the MTA outgrows it. Skipped without micropython, mpy-cross,
smtp-sink or dnsmasq.
"""
import os
import shutil
import subprocess

import pytest

from mtaproc import MICROPYTHON, ROOT
import relaykit
from relaykit import SmtpSink, message, needs, pending, relay_mx, send, wait_for
from test_relay import delivered_once

MPY_CROSS = shutil.which("mpy-cross")
SHIM = os.path.join(ROOT, "firmware", "micropython", "lib", "dns")
HEAP = os.environ.get("TINYMTA_MP_HEAP", "308K")   # passes from 292K up every time, + 16K (BENCHMARKS.md)
MAIN = "127.0.0.2"
SENDER, RCPT = "alice@client.test", "bob@example.test"

peers = relaykit.peers              # the fixture: every peer and MTA it starts is stopped by PID
pytestmark = [needs("smtp-sink", "dnsmasq"),
              pytest.mark.skipif(not os.path.exists(MICROPYTHON) or MPY_CROSS is None,
                                 reason="MicroPython unix port or mpy-cross not installed")]


def build_mpy(dest):
    """tinymta/*.py and the dns shim compiled to .mpy under dest (only .mpy: MP prefers .py)."""
    for src, pkg in ((os.path.join(ROOT, "tinymta"), "tinymta"), (SHIM, "dns")):
        os.makedirs(os.path.join(dest, pkg))
        for name in sorted(os.listdir(src)):
            if name.endswith(".py"):
                out = os.path.join(dest, pkg, name[:-3] + ".mpy")
                subprocess.run([MPY_CROSS, "-o", out, os.path.join(src, name)], check=True,
                               capture_output=True, timeout=60)
    return dest


def test_mx_relay_deferral_retry_and_power_cut_on_micropython(peers, tmp_path):
    lib = build_mpy(str(tmp_path / "mpy"))
    dns = peers.dns(mx=[("example.test", "mx1.example.test", 10)], hosts={"mx1.example.test": MAIN})
    relay = relay_mx(dns, peers.port, retry_min="1s", retry_max="1s")

    def board():
        return peers.mta(runtime="micropython", heap=HEAP, mpypath=lib, relay=relay)

    mta = board()
    # 1. nothing listens at the MX host yet: accepted, then deferred
    first = message("mp-defer", rcpt=RCPT)
    send(mta, SENDER, [RCPT], first)
    wait_for(lambda: "stage=CONNECT, status=deferred" in mta.log(), 15, "the deferral")
    # 2. the sink comes up: a retry delivers it, byte for byte
    sink = peers.smtp_sink(MAIN)
    delivered_once(sink, first, rcpts=[RCPT])
    wait_for(lambda: "status=sent" in mta.log(), 10, "the log line")
    sink.stop()
    # 3. power cut: accepted (250) while the sink is down, deferred, then SIGKILL
    deferred = mta.log().count("status=deferred")
    second = message("mp-powercut", rcpt=RCPT)
    send(mta, SENDER, [RCPT], second)
    wait_for(lambda: mta.log().count("status=deferred") > deferred, 15, "the second deferral")
    mta.kill()
    assert pending(mta) == [(SENDER, [RCPT])]          # on the medium, the first one acked
    # 4. restarted with the sink back: the second message arrives, the first is not re-sent
    os.mkdir(str(tmp_path / "sink2"))                  # its own log: counters start at 0
    sink2 = peers._add(SmtpSink(str(tmp_path / "sink2"), MAIN, peers.port))
    again = board()
    assert "(1 messages)" in again.log(), again.log()[-2000:]
    delivered_once(sink2, second, rcpts=[RCPT])
    wait_for(lambda: again.log().count("status=sent") >= 2, 10, "the log line")
    assert again.stop() == 0
    assert pending(again) == []
    log = again.log()
    assert "MemoryError" not in log and "Traceback" not in log, log[-3000:]
    assert ("MX", "example.test") in dns.queries()


def test_smarthost_name_resolved_by_the_dns_shim_on_micropython(peers, tmp_path):
    """A smarthost given by name: on MicroPython it is looked up through the dns shim (bounded
    waits that feed a board's watchdog), not lwIP's unbounded getaddrinfo."""
    lib = build_mpy(str(tmp_path / "mpy"))
    dns = peers.dns(hosts={"smart.example.test": MAIN})
    sink = peers.smtp_sink(MAIN)
    relay = {"mode": "smarthost", "smarthost": "smart.example.test:%d" % peers.port, "tls": "none",
             "dns_servers": ["%s:%d" % dns.server], "retry_min": "1s", "retry_max": "1s"}
    mta = peers.mta(runtime="micropython", heap=HEAP, mpypath=lib, relay=relay)
    msg = message("mp-smarthost", rcpt=RCPT)
    send(mta, SENDER, [RCPT], msg)
    delivered_once(sink, msg, rcpts=[RCPT])
    assert ("A", "smart.example.test") in dns.queries()
    assert mta.stop() == 0
    assert pending(mta) == []
