"""tinymta.bounce on both runtimes: DSN structure, header safety, part 3, the limiter, no bounce loops.

Plain asserts and argument-less test_* functions: pytest collects them on CPython and
tests/mp_runner.py runs them under MicroPython.  The email-package cross-check of the same
messages is tests/test_bounce_email.py (CPython only).
"""
from tinymta import bounce, compat
from tinymta.bounce import BounceLimiter, build_dsn, should_bounce

ARRIVED = 1795000000
NOW = ARRIVED + 3600
ORIG = (b"Received: from s ([10.0.0.9]) by pi.lan (tinymta) with ESMTP id 1A2B; x\r\n"
        b"From: <alice@lan.example>\r\nTo: bob@example.com\r\nSubject: alarm\r\n"
        b"Message-ID: <1A2B.0@pi.lan>\r\n")
DIAG = b"550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table"


def _dsn(recipients=None, headers=ORIG, qid="1A2B", delayed=False, sender="alice@lan.example"):
    if recipients is None:
        recipients = [("bob@example.com", "5.1.1", DIAG, "mx.example.com")]
    return build_dsn("pi.lan", sender, ARRIVED, recipients, headers, qid, NOW, delayed)


def _split(msg):
    """(header lines, {part number: (part header lines, part body)}, boundary) by hand."""
    head, _, body = msg.partition(b"\r\n\r\n")
    ct = head[head.find(b"boundary=\"") + 10:]
    boundary = ct[:ct.find(b"\"")]
    chunks = body.split(b"\r\n--" + boundary)
    assert chunks[-1] == b"--\r\n", chunks[-1]
    parts = []
    for c in chunks[1:-1]:
        assert c.startswith(b"\r\n")
        ph, _, pb = c[2:].partition(b"\r\n\r\n")
        parts.append((ph.split(b"\r\n"), pb))
    return head.split(b"\r\n"), parts, boundary


def _blocks(report):
    """The delivery-status groups as lists of (name, value) with folding undone."""
    groups = []
    for g in report.split(b"\r\n\r\n"):
        fields = []
        for line in g.split(b"\r\n"):
            if not line:
                continue
            if line[0] in (32, 9):
                n, v = fields[-1]
                fields[-1] = (n, v + b" " + line.strip())
            else:
                n, _, v = line.partition(b": ")
                fields.append((n, v))
        groups.append(fields)
    return groups


def _get(fields, name):
    vals = [v for n, v in fields if n == name]
    return vals[0] if len(vals) == 1 else vals


def _lines_ok(msg):
    """CRLF only, no line over 998 octets."""
    assert msg.endswith(b"\r\n")
    for line in msg.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= 998, len(line)


def test_top_level_header_section():
    msg = _dsn()
    _lines_ok(msg)
    head, parts, boundary = _split(msg)
    names = [h.split(b":")[0] for h in head if h[:1] not in (b" ", b"\t")]
    for n in (b"From", b"To", b"Subject", b"Date", b"Message-ID", b"Auto-Submitted", b"MIME-Version",
              b"Content-Type"):
        assert names.count(n) == 1, n
    assert b"From: Mail Delivery System <MAILER-DAEMON@pi.lan>" in head
    assert b"To: <alice@lan.example>" in head
    assert b"Subject: Undelivered Mail Returned to Sender" in head
    assert b"Date: " + compat.rfc5322_date(NOW).encode() in head
    assert b"Auto-Submitted: auto-replied" in head and b"MIME-Version: 1.0" in head
    mid = [h for h in head if h.startswith(b"Message-ID: <")][0]
    assert mid.endswith(b"@pi.lan>") and b" " not in mid[12:]
    ct = b" ".join(h.strip() for h in head[names.index(b"Content-Type"):])
    assert ct.startswith(b"Content-Type: multipart/report; report-type=delivery-status;")
    assert len(boundary) > 10 and boundary not in msg.partition(b"\r\n\r\n")[2].replace(b"--" + boundary, b"")
    assert b"Content-Transfer-Encoding" not in msg      # all 7-bit here
    for c in msg:
        assert c < 0x80


def test_three_parts_in_order():
    head, parts, _ = _split(_dsn())
    assert len(parts) == 3
    assert b"Content-Type: text/plain; charset=us-ascii" in parts[0][0]
    assert b"Content-Type: message/delivery-status" in parts[1][0]
    assert b"Content-Type: text/rfc822-headers" in parts[2][0]
    assert parts[2][1] == ORIG
    text = parts[0][1]
    assert b"could not be delivered" in text and b"<bob@example.com>: status 5.1.1" in text
    assert b"host mx.example.com said: 550 5.1.1 <bob@example.com>" in text
    assert b"Queue ID: 1A2B" in text


def test_delivery_status_fields():
    _, parts, _ = _split(_dsn())
    groups = _blocks(parts[1][1])
    assert len(groups) == 2
    msg_f, rcpt_f = groups
    assert [n for n, v in msg_f] == [b"Reporting-MTA", b"X-Queue-ID", b"Arrival-Date"]
    assert _get(msg_f, b"Reporting-MTA") == b"dns; pi.lan"
    assert _get(msg_f, b"X-Queue-ID") == b"1A2B"
    assert _get(msg_f, b"Arrival-Date") == compat.rfc5322_date(ARRIVED).encode()
    assert [n for n, v in rcpt_f] == [b"Final-Recipient", b"Action", b"Status", b"Remote-MTA",
                                      b"Diagnostic-Code", b"Last-Attempt-Date"]
    assert _get(rcpt_f, b"Final-Recipient") == b"rfc822; bob@example.com"
    assert _get(rcpt_f, b"Action") == b"failed"
    assert _get(rcpt_f, b"Status") == b"5.1.1"
    assert _get(rcpt_f, b"Remote-MTA") == b"dns; mx.example.com"
    assert _get(rcpt_f, b"Diagnostic-Code") == b"smtp; " + DIAG
    assert _get(rcpt_f, b"Last-Attempt-Date") == compat.rfc5322_date(NOW).encode()


def test_several_recipients_optional_fields_and_status_check():
    rcpts = [("a@x.example", "5.1.1", "550 no such user", "mx.x.example"),
             ("b@y.example", "4.4.1", None, None),
             ("c@z.example", "5.4.4", "Host or domain name not found", None, "C@Z.example"),
             ("d@z.example", "bogus", b"", None, "utf-8;d@z.example")]
    _, parts, _ = _split(build_dsn("pi.lan", "s@lan.example", None, rcpts, ORIG, None, NOW))
    groups = _blocks(parts[1][1])
    assert len(groups) == 5
    assert [n for n, v in groups[0]] == [b"Reporting-MTA"]        # no queue id, no arrival date
    assert _get(groups[1], b"Diagnostic-Code") == b"smtp; 550 no such user"
    assert [n for n, v in groups[2]] == [b"Final-Recipient", b"Action", b"Status", b"Last-Attempt-Date"]
    assert _get(groups[2], b"Status") == b"4.4.1"
    assert _get(groups[3], b"Original-Recipient") == b"rfc822; C@Z.example"
    assert _get(groups[3], b"Diagnostic-Code") == b"x-tinymta; Host or domain name not found"
    assert _get(groups[4], b"Original-Recipient") == b"utf-8;d@z.example"
    assert _get(groups[4], b"Status") == b"5.0.0"
    assert _get(groups[4], b"Diagnostic-Code") == []
    for g in groups[1:]:
        assert _get(g, b"Action") == b"failed"
    text = parts[0][1]
    for a in (b"a@x.example", b"b@y.example", b"c@z.example", b"d@z.example"):
        assert b"<" + a + b">: status " in text
    assert b"reason: Host or domain name not found" in text and b"Queue ID" not in text


def test_delayed_notice():
    msg = _dsn([("bob@example.com", "4.4.1", "421 4.4.1 try later", "mx.example.com"),
                ("eve@example.com", "5.1.1", None, None), ("f@example.com", "x", None, None)], delayed=True)
    head, parts, _ = _split(msg)
    assert b"Subject: Delayed Mail (still being retried)" in head
    groups = _blocks(parts[1][1])
    assert [_get(g, b"Action") for g in groups[1:]] == [b"delayed"] * 3
    assert _get(groups[1], b"Status") == b"4.4.1" and _get(groups[3], b"Status") == b"4.0.0"
    assert b"will be retried" in parts[0][1]


def test_diagnostic_cannot_inject_fields_or_boundaries():
    _, parts0, boundary0 = _split(_dsn())
    evil = (b"550 no\r\nBcc: victim@example.com\r\n\r\n--" + boundary0 +
            b"\r\nContent-Type: text/html\n\rX: y\t\x00z\x7f")
    for diag in (evil, evil.decode()):
        msg = _dsn([("bob@example.com", "5.1.1", diag, "mx.example.com\r\nX-Evil: 1")],
                   qid="1A\r\nX-Q: 2", sender="alice@lan.example\r\nBcc: x@y")
        _lines_ok(msg)
        head, parts, boundary = _split(msg)
        assert len(parts) == 3
        for line in msg.split(b"\r\n"):
            for bad in (b"Bcc:", b"X-Evil", b"X-Q:"):
                assert not line.startswith(bad), line
            assert not line.startswith(b"Content-Type: text/html") and not line.startswith(b"X: y")
        rcpt = _blocks(parts[1][1])[1]
        assert _get(rcpt, b"Diagnostic-Code") == (b"smtp; 550 no Bcc: victim@example.com --" + boundary0 +
                                                  b" Content-Type: text/html X: y z")
        assert _get(rcpt, b"Remote-MTA") == b"dns; mx.example.comX-Evil:1"
        assert b"To: <alice@lan.example Bcc: x@y>" in head
        for c in msg:
            assert c == 13 or c == 10 or 32 <= c < 127


def test_long_diagnostics_fold_or_truncate():
    words = b" ".join(b"word%d" % i for i in range(1000))          # ~7 KB with spaces
    token = b"550-" + b"x" * 5000                                    # nowhere to fold
    msg = _dsn([("a@x.example", "5.1.1", b"550 " + words, "mx"), ("b@x.example", "5.1.1", token, None)])
    _lines_ok(msg)
    _, parts, _ = _split(msg)
    for line in parts[1][1].split(b"\r\n"):
        if b"xxxxx" not in line:
            assert len(line) <= 78, line
    for line in parts[0][1].split(b"\r\n"):
        if b"xxxxx" not in line:
            assert len(line) <= 78, line
    groups = _blocks(parts[1][1])
    d1 = _get(groups[1], b"Diagnostic-Code")
    assert d1.startswith(b"smtp; 550 word0 word1 ") and d1.endswith(b"...")
    assert len(d1) == len(b"smtp; ") + bounce.VALUE_MAX
    assert (b"550 " + words).startswith(d1[6:-3])
    d2 = _get(groups[2], b"Diagnostic-Code")
    assert d2 == b"smtp; " + token[:bounce.VALUE_MAX - 3] + b"..."


def test_non_ascii_diagnostic_is_replaced():
    utf8 = "550 Empfänger unbekannt: «bob» 😀 ok".encode()
    bad = b"550 bad \xff\xfe octets \xc3 end \x80"
    msg = _dsn([("a@x.example", "5.1.1", utf8, None), ("b@x.example", "5.1.1", bad, None),
                ("c@x.example", "5.1.1", "550 str é", None)])
    for c in msg:
        assert c < 0x80
    groups = _blocks(_split(msg)[1][1][1])
    assert _get(groups[1], b"Diagnostic-Code") == b"smtp; 550 Empf?nger unbekannt: ?bob? ? ok"
    assert _get(groups[2], b"Diagnostic-Code") == b"smtp; 550 bad ?? octets ? end ?"
    assert _get(groups[3], b"Diagnostic-Code") == b"smtp; 550 str ?"


def test_original_headers_normalised_and_capped():
    raw = b"Subject: a\nX-Bare: cr\rin line\r\nX-Long: " + b"y" * 2000 + b"\r\n\r\nbody must not appear\r\n"
    _, parts, _ = _split(_dsn(headers=raw))
    assert parts[2][1] == b"Subject: a\r\nX-Bare: cr in line\r\nX-Long: " + b"y" * 990 + b"\r\n"
    many = b"".join(b"X-H%05d: %s\r\n" % (i, b"v" * 60) for i in range(1000))   # ~70 KB
    msg = _dsn(headers=many)
    _lines_ok(msg)
    kept = _split(msg)[1][2][1]
    assert len(kept) <= bounce.HEADERS_MAX and len(kept) > bounce.HEADERS_MAX - 80
    assert many.startswith(kept) and kept.endswith(b"\r\n")
    for h in (b"", None, b"\r\nbody only\r\n"):
        head, parts, _ = _split(_dsn(headers=h))
        assert len(parts) == 2 and b"attached" not in parts[0][1]


def test_eight_bit_original_headers_are_labelled():
    raw = "Subject: Temperatur über 30°C\r\n".encode()
    msg = _dsn(headers=raw)
    head, parts, _ = _split(msg)
    assert b"Content-Transfer-Encoding: 8bit" in head
    assert b"Content-Transfer-Encoding: 8bit" in parts[2][0]
    assert parts[2][1] == raw


def test_boundary_never_occurs_in_a_part():
    seq = [0, 0, 0, 0, 1, 2, 3]
    old = compat.random_u32

    def fake():
        return seq.pop(0) if seq else 7
    compat.random_u32 = fake
    try:
        clash = b"X-Trap: =_%08x%08x.%d\r\n" % (0, 0, NOW)
        msg = _dsn(headers=clash)
    finally:
        compat.random_u32 = old
    head, parts, boundary = _split(msg)
    assert boundary == b"=_%08x%08x.%d" % (1, 2, NOW)
    assert parts[2][1] == clash and len(parts) == 3


def test_null_sender_and_loop_guard():
    for s in ("", "<>", " <> ", None, b"", "MAILER-DAEMON@pi.lan", "mailer-daemon@example.com",
              "<Mailer-Daemon@x.example>", "MAILER-DAEMON", b"MAILER-DAEMON@x",
              "\"mailer-daemon\"@x.example"):
        assert should_bounce(s) is False, s
    for s in ("alice@lan.example", "<alice@lan.example>", "postmaster@x.example", "root",
              "mailer-daemon-fan@x.example", b"bob@x"):
        assert should_bounce(s) is True, s
    for s in ("", "<>", "MAILER-DAEMON@pi.lan"):
        try:
            _dsn(sender=s)
            assert False, "a DSN was built for %r" % s
        except ValueError:
            pass
    try:
        _dsn(recipients=[])
        assert False, "a DSN with no recipients"
    except ValueError:
        pass
    assert b"To: <alice@lan.example>" in _dsn(sender="<alice@lan.example>")


def test_limiter_burst_then_refill():
    lim = BounceLimiter(5, 3600)                 # one bounce every 720 s
    t = 1795000000
    assert [lim.allow(t) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.denied == 2
    assert lim.allow(t + 719) is False
    assert lim.allow(t + 720) is True
    assert lim.allow(t + 720) is False
    assert lim.allow(t + 2 * 720 + 100) is True  # the 100 s remainder is kept
    assert lim.allow(t + 3 * 720) is True
    # a long idle time refills to the cap and no more
    t2 = t + 10 * 86400
    assert [lim.allow(t2) for _ in range(6)] == [True] * 5 + [False]


def test_limiter_clock_steps_back_and_edge_cases():
    lim = BounceLimiter(2, 60)
    t = 1000000
    assert lim.allow(t) and lim.allow(t) and not lim.allow(t)
    assert lim.allow(t - 500) is False           # stepping back adds nothing...
    assert lim.allow(t - 500 + 29) is False
    assert lim.allow(t - 500 + 30) is True       # ...and refilling goes on from the new time
    zero = BounceLimiter(0, 60)
    assert not zero.allow(t) and not zero.allow(t + 10 ** 6) and zero.denied == 2
    for args in ((-1, 60), (5, 0)):
        try:
            BounceLimiter(args[0], args[1])
            assert False, args
        except ValueError:
            pass
    spool_filler = BounceLimiter(10, 3600)       # a dead upstream: 1000 failures in a day
    sent = 0
    for i in range(1000):
        if spool_filler.allow(t + i * 86):
            sent += 1
    assert sent <= 10 + 24 * 10 and sent >= 24 * 10
