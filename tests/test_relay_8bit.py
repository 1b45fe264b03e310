"""An 8-bit message to a next hop without 8BITMIME bounces with 5.6.3; it is never sent mangled.

smtp-sink -8 (no 8BITMIME) is the next hop, found through a private dnsmasq MX record.
"""
import glob
import os
import shutil
import smtplib
import subprocess
import time

import pytest

from dnsmasqfix import Dnsmasq
from mtaproc import MTA, free_port

pytestmark = pytest.mark.skipif(not shutil.which("smtp-sink") or not shutil.which("dnsmasq") and
                                not os.path.exists("/usr/sbin/dnsmasq"), reason="needs smtp-sink and dnsmasq")


def _sink(tmp_path, *flags):
    port = free_port("127.0.0.2")
    dump = tmp_path / "dump"
    dump.mkdir()
    os.chmod(str(tmp_path), 0o755)
    os.chmod(str(dump), 0o777)
    proc = subprocess.Popen(["smtp-sink", "-u", "nobody"] + list(flags) + ["-d", str(dump) + "/%M.",
                            "127.0.0.2:%d" % port, "64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port, str(dump)


def test_eight_bit_to_a_hop_without_8bitmime_bounces_5_6_3(tmp_path):
    sink, port, dump = _sink(tmp_path, "-8")
    dns = Dnsmasq(str(tmp_path), mx=[("example.test", "mx1.example.test", 10)],
                  hosts={"mx1.example.test": "127.0.0.2"}).start()
    try:
        relay = {"mode": "mx", "dns_servers": ["%s:%d" % dns.server], "mx_port": port, "retry_min": 1, "retry_max": 2}
        with MTA(tmp_path, relay=relay) as mta:
            with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as s:
                s.ehlo("sensor.test")
                s.sendmail("sensor@example.test", ["ops@example.test"],
                           "Subject: Temperatur\r\n\r\nAu\u00dfentemperatur 40 \u00b0C\r\n".encode(),
                           mail_options=["BODY=8BITMIME"])
            deadline = time.time() + 15
            while time.time() < deadline and "status=bounced" not in mta.log():
                time.sleep(0.2)
            log = mta.log()
        assert "to=<ops@example.test>" in log and "status=bounced (5.6.3" in log, log[-3000:]
        # the DSN (from <>) went to the sender, through the same sink; the original never did
        bodies = [open(f, "rb").read() for f in glob.glob(dump + "/*")]
        assert not [b for b in bodies if b"Au\xc3\x9fentemperatur" in b.split(b"\n\n", 1)[-1][:200] and
                    b"multipart/report" not in b], "the 8-bit message was sent to a hop without 8BITMIME"
    finally:
        sink.kill()
        sink.wait()
        dns.stop()
