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


def test_a_client_reset_under_its_250_ends_that_client_only(server, monkeypatch):
    """The peer resets while the 250 after the group commit goes out (a client that closes
    without reading): the message is durable and handed to the relay, the loop goes on."""
    from tinymta import netio
    srv, _, port = server
    queued, real_send, resets = [], netio.send, []

    def send(sock, data):
        if bytes(data[:4]) == b"250 " and b"queued as" in bytes(data) and not resets:
            resets.append(1)
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_send(sock, data)
    monkeypatch.setattr(netio, "send", send)
    srv.on_queued = queued.append
    with pytest.raises(smtplib.SMTPException):
        _send(port, 1)                                  # this client never sees its 250
    assert _send(port, 2) == {}                         # the server still serves
    assert resets == [1] and len(queued) == 2 and all(q in srv.spool for q in queued)
    assert srv.running


def test_a_session_fault_is_answered_421_and_logged(server, monkeypatch):
    """A bug inside the session (here: NOOP made to raise) gets the client a 421, and the log says
    what went wrong, not just "disconnect"."""
    from tinymta import compat, session
    srv, _, port = server
    lines = []
    real_step = session.Session._step

    def step(self):
        if b"NOOP" in bytes(self._buf).upper():
            raise ZeroDivisionError("a bug")
        return real_step(self)
    monkeypatch.setattr(session.Session, "_step", step)
    compat.set_log_sink(lines.append)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            assert s.noop()[0] == 421
    except smtplib.SMTPServerDisconnected:
        pass
    finally:
        compat.set_log_sink(None)
    assert [ln for ln in lines if "session fault: ZeroDivisionError('a bug')" in ln], lines
    assert _send(port, 3) == {}
