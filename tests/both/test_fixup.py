"""Submission fix-ups: Received always; Date, Message-ID, From only when missing.  Both runtimes."""
from tinymta import compat
from tinymta.fixup import HeaderFixer

RCV = b"Received: from s ([10.0.0.9]) by pi (tinymta) with ESMTP id 1A; x\r\n"


def _run(data, split=7, sender="s@lan.example"):
    fx = HeaderFixer(RCV, sender, "pi.lan", "1A", 1795000000)
    out = bytearray()
    for i in range(0, len(data), split):
        out.extend(fx.feed(data[i:i + split]))
    out.extend(fx.finish())
    return bytes(out), fx


def _headers(msg):
    return msg[:msg.find(b"\r\n\r\n") + 2]


def test_complete_message_only_gains_received():
    msg = b"From: a@b\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <x@y>\r\nSubject: s\r\n\r\nbody\r\n"
    for split in (1, 3, 7, 1000):
        out, fx = _run(msg, split)
        assert out == RCV + msg and fx.added == []


def test_missing_fields_are_added_at_the_end_of_the_header_section():
    msg = b"Subject: alarm\r\nX-Sensor: 7\r\n\r\nTemperature high\r\n.. dots stay\r\n"
    out, fx = _run(msg)
    assert out.startswith(RCV + b"Subject: alarm\r\nX-Sensor: 7\r\nDate: ")
    assert out.endswith(b"\r\n\r\nTemperature high\r\n.. dots stay\r\n")
    h = _headers(out)
    assert b"\r\nDate: " + compat.rfc5322_date(1795000000).encode() + b"\r\n" in h
    assert b"\r\nMessage-ID: <1A." in h and b"@pi.lan>\r\n" in h
    assert b"\r\nFrom: <s@lan.example>\r\n" in h
    assert sorted(fx.added) == ["Date", "From", "Message-ID"]


def test_bare_text_gets_headers_and_separator():
    out, _ = _run(b"mains power lost\r\nbattery 80%\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"mains power lost\r\nbattery 80%\r\n"
    assert head.startswith(RCV[:-2]) and b"From: <s@lan.example>" in head


def test_null_sender_and_folded_and_case():
    msg = b"FROM: x@y\r\ndate: Fri, 27 Nov 2026 10:00:00 +0000\r\nSubject: long\r\n  folded\r\n\r\nb\r\n"
    out, fx = _run(msg, 5, sender="")
    assert fx.added == ["Message-ID"]
    assert b"  folded\r\nMessage-ID: <" in out
    out, fx = _run(b"Subject: s\r\n\r\n", 2, sender="")
    assert b"From: <MAILER-DAEMON@pi.lan>" in out


def test_headers_only_and_empty_message():
    out, fx = _run(b"Subject: only\r\n")
    assert out.startswith(RCV + b"Subject: only\r\nDate: ") and fx.added
    out, fx = _run(b"")
    assert out.startswith(RCV + b"Date: ")


def test_header_section_longer_than_the_limit_passes_unchanged():
    fx = HeaderFixer(RCV, "s@x", "pi", "1A", 0, limit=100)
    msg = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 20) for i in range(20)) + b"\r\nbody\r\n"
    out = bytearray()
    for i in range(0, len(msg), 10):
        out.extend(fx.feed(msg[i:i + 10]))
    out.extend(fx.finish())
    assert bytes(out) == RCV + msg


def test_rfc5322_date_is_exact():
    assert compat.rfc5322_date(0) == "Thu, 1 Jan 1970 00:00:00 +0000"
    assert compat.rfc5322_date(1795000000) == "Wed, 18 Nov 2026 11:06:40 +0000"
    assert compat.rfc5322_date(951782400) == "Tue, 29 Feb 2000 00:00:00 +0000"
    for t in (0, 86399, 951782400, 1795000000, 4102444800):
        assert compat.timegm(compat.utc_tuple(t)) == t
