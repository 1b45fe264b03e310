"""An 8-bit message to a next hop without 8BITMIME bounces with 5.6.3; it is never sent mangled.

smtp-sink -8 (no 8BITMIME) is the next hop for example.test, found through a private dnsmasq;
the bounce (a 7-bit DSN) goes back to the sender's domain through the same sink.
"""
import time

from dnsmasqfix import Dnsmasq
from mtaproc import MTA, free_port
from relaykit import SmtpSink


def test_eight_bit_to_a_hop_without_8bitmime_bounces_5_6_3(tmp_path):
    port = free_port("127.0.0.2")
    sink = SmtpSink(tmp_path, "127.0.0.2", port, ["-8"])
    dns = Dnsmasq(str(tmp_path), mx=[("example.test", "mx1.example.test", 10)],
                  hosts={"mx1.example.test": "127.0.0.2"}).start()
    try:
        relay = {"mode": "mx", "dns_servers": ["%s:%d" % dns.server], "mx_port": port, "retry_min": 1, "retry_max": 2}
        with MTA(tmp_path, relay=relay) as mta:
            with MTA.smtp(mta) as s:
                s.ehlo("sensor.test")
                s.sendmail("sensor@example.test", ["ops@example.test"],
                           "Subject: Temperatur\r\n\r\nAu\u00dfentemperatur 40 \u00b0C\r\n".encode(),
                           mail_options=["BODY=8BITMIME"])
            deadline = time.time() + 15
            while time.time() < deadline and sink.counters()["mesg"] < 1:
                time.sleep(0.2)
            time.sleep(0.3)
            log = mta.log()
        assert "to=<ops@example.test>" in log and "status=bounced (5.6.3" in log, log[-3000:]
        dumps = sink.dumps()
        assert len(dumps) == 1, "expected exactly the DSN at the sink, got %d messages" % len(dumps)
        dsn = dumps[0]
        assert b"X-Mail-Args: <>" in dsn and b"multipart/report" in dsn and b"Status: 5.6.3" in dsn, dsn[:2000]
        assert b"Au\xc3\x9fentemperatur" not in dsn.split(b"text/rfc822-headers", 1)[0]
    finally:
        sink.stop()
        dns.stop()
