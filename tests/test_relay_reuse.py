"""One connection carries several messages to the same next hop (no session per message)."""
import smtplib
import time

from mtaproc import MTA, free_port
from relaykit import SmtpSink

MSG = b"From: a@lan.example\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%d@lan.example>\r\n\r\nm %d\r\n"


def test_queued_messages_share_connections(tmp_path):
    port = free_port("127.0.0.2")
    sink = SmtpSink(tmp_path, "127.0.0.2", port)
    try:
        with MTA(tmp_path) as mta:                       # relay off: 10 messages wait in the spool
            with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as s:
                for i in range(10):
                    s.sendmail("a@lan.example", ["ops%d@example.org" % i], MSG % (i, i))
        relay = {"mode": "smarthost", "smarthost": "127.0.0.2:%d" % port, "tls": "none", "max_deliveries": 2}
        with MTA(tmp_path, relay=relay) as mta:
            deadline = time.time() + 20
            while time.time() < deadline and (sink.counters()["mesg"] < 10 or len(mta.messages()) > 0):
                time.sleep(0.2)
            log = mta.log()
        c = sink.counters()
        assert c["mesg"] == 10, (c, log[-2000:])
        assert c["sess"] <= 3, "one session per message: %r" % (c,)
        assert len(mta.messages()) == 0
        bodies = sorted(d.split(b"\n\n", 1)[-1].strip() for d in sink.dumps())   # the sink writes LF
        assert bodies == sorted(b"m %d" % i for i in range(10))
    finally:
        sink.stop()
