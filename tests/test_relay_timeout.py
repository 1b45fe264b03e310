"""relay.timeout is honoured: a next hop that accepts but never greets is given up on (deferred),
and while that delivery waits, new mail is still accepted at once."""
import smtplib
import socket
import time

from mtaproc import MTA, free_port


def test_silent_next_hop_times_out_and_intake_goes_on(tmp_path):
    port = free_port("127.0.0.2")
    silent = socket.socket()
    silent.bind(("127.0.0.2", port))
    silent.listen(8)                             # accepts (the kernel does), never says a word
    try:
        relay = {"mode": "smarthost", "smarthost": "127.0.0.2:%d" % port, "tls": "none", "timeout": 2,
                 "retry_min": 60, "retry_max": 120}
        with MTA(tmp_path, relay=relay) as mta:
            with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as s:
                s.sendmail("a@lan.example", ["b@example.org"], b"Subject: 1\r\n\r\nx\r\n")
                t0 = time.time()
                for i in range(5):               # the relay is waiting on the silent hop meanwhile
                    s.sendmail("a@lan.example", ["b@example.org"], b"Subject: more\r\n\r\nx\r\n")
                assert time.time() - t0 < 2, "intake stalled behind a delivery"
            deadline = time.time() + 8
            while time.time() < deadline and "stage=GREETING" not in mta.log():
                time.sleep(0.2)
            log = mta.log()
        assert "stage=GREETING" in log and "No greeting" in log and "status=deferred" in log, log[-2000:]
        assert len(mta.messages()) == 6                  # nothing lost, nothing bounced
    finally:
        silent.close()


def test_hanging_dns_lookup_does_not_stall_intake(tmp_path):
    from dnsmasqfix import Dnsmasq
    dns = Dnsmasq(str(tmp_path), timeout=["slow.test"]).start()   # never answers for slow.test
    try:
        relay = {"mode": "mx", "dns_servers": ["%s:%d" % dns.server], "retry_min": 60, "retry_max": 120}
        with MTA(tmp_path, relay=relay) as mta:
            with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as s:
                s.sendmail("a@lan.example", ["b@slow.test"], b"Subject: 1\r\n\r\nx\r\n")
                time.sleep(0.5)                  # the MX lookup is hanging now
                t0 = time.time()
                for i in range(5):
                    s.sendmail("a@lan.example", ["c@slow.test"], b"Subject: more\r\n\r\nx\r\n")
                assert time.time() - t0 < 2, "intake stalled behind a DNS lookup"
            deadline = time.time() + 20
            while time.time() < deadline and "stage=DNS" not in mta.log():
                time.sleep(0.2)
            assert "stage=DNS" in mta.log() and "4.4.3" in mta.log(), mta.log()[-2000:]
        assert len(mta.messages()) == 6
    finally:
        dns.stop()


def test_tls_handshake_that_never_finishes_does_not_stall_intake(tmp_path):
    port = free_port("127.0.0.2")
    silent = socket.socket()
    silent.bind(("127.0.0.2", port))
    silent.listen(8)                             # implicit TLS: the client speaks first, nobody answers
    try:
        relay = {"mode": "smarthost", "smarthost": "127.0.0.2:%d" % port, "tls": "implicit", "timeout": 2,
                 "retry_min": 60, "retry_max": 120}
        with MTA(tmp_path, relay=relay) as mta:
            with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as s:
                s.sendmail("a@lan.example", ["b@example.org"], b"Subject: 1\r\n\r\nx\r\n")
                time.sleep(0.3)                  # the handshake is hanging now
                t0 = time.time()
                for i in range(5):
                    s.sendmail("a@lan.example", ["b@example.org"], b"Subject: more\r\n\r\nx\r\n")
                assert time.time() - t0 < 2, "intake stalled behind a TLS handshake"
            deadline = time.time() + 8
            while time.time() < deadline and "status=deferred" not in mta.log():
                time.sleep(0.2)
            assert "status=deferred" in mta.log(), mta.log()[-2000:]
        assert len(mta.messages()) == 6
    finally:
        silent.close()
