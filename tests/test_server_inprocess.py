"""The server loop in-process, for faults real peers cannot produce: a flash write that fails.

The server runs in a thread over a spool on FlashSim; clients are real smtplib sessions.
"""
import smtplib
import threading

import pytest

from mtaproc import free_port
from tinymta.flashsim import FlashSim
from tinymta.config import from_dict
from tinymta.server import Server
from tinymta.spool import Spool

MSG = b"From: a@lan.example\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%d@x>\r\n\r\nbody %d\r\n"


@pytest.fixture
def server():
    port = free_port()
    cfg = from_dict({"server": {"listen": ["127.0.0.1:%d" % port], "hostname": "mta.test",
                                "max_message_size": "32K"}})
    flash = FlashSim(16, 4096, 256)
    srv = Server(cfg, Spool(flash))
    srv.listen()
    t = threading.Thread(target=srv.run, args=(50,), daemon=True)
    t.start()
    yield srv, flash, port
    srv.stop()
    t.join(10)
    assert not t.is_alive()


def _send(port, n):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        return s.sendmail("a@lan.example", ["b@example.org"], MSG % (n, n))


def test_failed_flash_write_gets_451_never_250_then_mail_flows_again(server):
    srv, flash, port = server
    _send(port, 1)
    flash.bad.add(srv.spool.head_pos)            # the sector being written wears out
    with pytest.raises(smtplib.SMTPDataError) as e:
        _send(port, 2)
    assert e.value.smtp_code == 451
    _send(port, 3)                               # recovered: a new sector, a new 250
    bodies = [b"".join(srv.spool.read(m.id)) for m in srv.spool.messages()]
    assert len(bodies) == 2 and bodies[0].endswith(b"body 1\r\n") and bodies[1].endswith(b"body 3\r\n")
    assert not any(b"body 2" in b for b in bodies)


def test_dotless_recipient_domain_is_refused(server):
    srv, flash, port = server
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("a@lan.example")
        code, text = s.rcpt("admin@nas")
        assert code == 550 and b"5.1.2" in text
        assert s.rcpt("admin@[127.0.0.2]")[0] == 250
        assert s.rcpt("postmaster")[0] == 250


def test_a_failing_loop_hook_is_logged_and_the_loop_goes_on(server):
    """A part's hook that raises (a relay bug, a board's MemoryError) must not stop the MTA."""
    from tinymta import compat
    srv, _, port = server
    lines, calls = [], []

    def broken(now_ms):
        calls.append(now_ms)
        raise MemoryError("memory allocation failed, allocating 16384 bytes")
    compat.set_log_sink(lines.append)
    try:
        srv.hooks.append(broken)
        assert _send(port, 1) == {}
        assert _send(port, 2) == {}                     # still serving after the hook failed
    finally:
        srv.hooks.remove(broken)
        compat.set_log_sink(None)
    assert len(calls) >= 2 and srv.running
    assert [ln for ln in lines if "loop hook" in ln and "MemoryError" in ln]
