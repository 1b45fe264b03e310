"""tinymta.session: the sans-IO SMTP server state machine, fed bytes, checked event by event.

Plain asserts, no pytest: runs under pytest on CPython and under tests/mp_runner.py on
MicroPython.  Tests are named after protocol.md rows (F*, G*, A*, L*, T*, X*, SM*, P*).
"""
from tinymta.session import Session, Policy, SessionError, CHUNK
from tinymta import smtpproto

HOST = b"mx.test"


def policy(**kw):
    p = Policy(hostname="mx.test")
    for k in kw:
        setattr(p, k, kw[k])
    return p


def check_reply(wire):
    """L2, G17, X5: CRLF lines of <= 512 octets, code 2xx-5xx, enhanced code on 2/4/5xx lines
    (except HELO/EHLO replies and the banner), all lines of a multi-line reply share the code."""
    assert wire.endswith(b"\r\n"), wire
    lines = wire[:-2].split(b"\r\n")
    code = lines[0][:3]
    for i in range(len(lines)):
        line = lines[i]
        assert len(line) + 2 <= 512 and line[:3] == code, wire
        assert line[3:4] == (b" " if i == len(lines) - 1 else b"-"), wire
        assert b"\r" not in line and b"\n" not in line
    assert code[:1] in (b"2", b"3", b"4", b"5") and code.isdigit(), wire
    if code[:1] != b"3" and not lines[0][4:].startswith(HOST):
        for line in lines:
            cls, _, _ = line[4:].partition(b" ")
            parts = cls.split(b".")
            assert len(parts) == 3 and parts[0] == code[:1], wire
            for p in parts:
                assert p.isdigit(), wire


class Driver:
    """Feeds a Session and answers every verdict, as a server would.

    mail: rejected (550 5.7.1) when the sender contains b"bad"; rcpt: rejected when the address
    contains b"deny"; data: accepted as Q1, Q2, ... (or failed when fail_data is set); auth: ok
    when the password is b"secret"; starttls: tls_started() at once when tls is True."""

    def __init__(self, pol=None, tls=True, fail_data=None, refuse=None):
        self.s = Session(pol or policy())
        self.banner = self.s.greeting(refuse)
        self.tls, self.fail_data = tls, fail_data
        self.events, self.messages, self.body = [], [], None
        self.closed = False

    def feed(self, data):
        self.s.receive(data)
        self.drain()
        return self

    def drain(self):
        s = self.s
        while True:
            ev = s.next_event()
            if ev is None:
                assert s.pending is None or s.pending == "tls", s.pending
                return
            self.events.append(ev)
            kind = ev[0]
            assert not self.closed, ev
            if kind == "reply":
                check_reply(ev[1])
            elif kind == "mail":
                if b"bad" in ev[1]:
                    s.reject_mail(b"550 5.7.1 Sender rejected")
                else:
                    s.accept_mail()
            elif kind == "rcpt":
                if b"deny" in ev[1]:
                    s.reject_rcpt(b"550 5.7.1 Relay access denied")
                else:
                    s.accept_rcpt()
            elif kind == "data_start":
                self.body = bytearray()
                self.envelope = (ev[1], ev[2])
            elif kind == "body":
                assert 0 < len(ev[1]) <= CHUNK
                self.body += ev[1]
            elif kind == "data_abort":
                self.body = None
            elif kind == "data_end":
                if self.fail_data:
                    s.message_failed(self.fail_data)
                else:
                    self.messages.append((self.envelope[0], self.envelope[1], bytes(self.body)))
                    s.message_accepted("Q%d" % len(self.messages))
                self.body = None
            elif kind == "auth":
                s.auth_result(ev[3] == b"secret")
            elif kind == "starttls":
                if self.tls:
                    s.tls_started()
            elif kind == "close":
                self.closed = True
            assert s.last_error is None, s.last_error

    def replies(self):
        return [e[1] for e in self.events if e[0] == "reply"]

    def codes(self):
        return [r[:3] for r in self.replies()]

    def kinds(self):
        return [e[0] for e in self.events]


def run(data, **kw):
    return Driver(**kw).feed(data)


def codes(data, **kw):
    return run(data, **kw).codes()


EHLO = b"EHLO client.test\r\n"
TXN = EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"


def splits_agree(data, **kw):
    """SM6: the same bytes split at every offset (and byte by byte) give identical events."""
    ref = run(data, **kw)
    for i in range(1, len(data)):
        d = Driver(**kw)
        d.feed(data[:i]).feed(data[i:])
        assert d.events == ref.events, (i, d.events, ref.events)
    d = Driver(**kw)
    for i in range(len(data)):
        d.feed(data[i:i + 1])
    assert d.events == ref.events
    return ref


# ---- 1.1 line framing, DATA termination ------------------------------------------------------
def test_F1_bare_lf_is_not_a_command_line_end():
    c = codes(b"NOOP\nNOOP\r\n")
    assert c.count(b"250") <= 1 and c[0] == b"500"
    assert codes(b"NOOP\rNOOP\r\n") == [b"500"]
    assert codes(b"NOOP\r\r\n") == [b"500"]


def test_F3_end_of_data_is_crlf_dot_crlf_and_empty_body():
    d = run(TXN + b"hello\r\n.\r\n")
    assert d.codes()[-1] == b"250" and d.messages[0][2] == b"hello\r\n"
    d = run(TXN + b".\r\n")
    assert d.codes()[-1] == b"250" and d.messages[0][2] == b""


def test_F4_lf_dot_lf_does_not_end_data():
    d = run(TXN + b"a\r\n\n.\n")
    assert d.codes()[-1] == b"354" and d.messages == []


def test_F5_dot_unstuffing():
    d = run(TXN + b"..foo\r\n.bar\r\n...\r\n.\r\n")
    assert d.messages[0][2] == b".foo\r\nbar\r\n..\r\n"


def test_F10_998_octet_line_is_accepted():
    d = run(TXN + b"x" * 998 + b"\r\n." + b"y" * 998 + b"\r\n.\r\n")
    assert d.codes()[-1] == b"250"
    assert d.messages[0][2] == b"x" * 998 + b"\r\n" + b"y" * 998 + b"\r\n"


def test_F9_longer_line_is_refused_after_the_real_end():
    d = run(TXN + b"x" * 999 + b"\r\nRSET\r\n.\r\nNOOP\r\n")
    assert d.codes()[-2:] == [b"554", b"250"] and d.messages == []
    assert "data_abort" in d.kinds()
    d = run(TXN + b"y" * 100000 + b"\r\n.\r\n")
    assert d.codes()[-1] == b"554"


# ---- 1.2 session, greeting, command set, sequencing -----------------------------------------
def test_G1_greeting():
    assert Driver().banner == b"220 mx.test ESMTP tinymta\r\n"


def test_G2_refused_service_answers_503_until_quit():
    d = run(EHLO + b"MAIL FROM:<a@b.test>\r\nNOOP\r\nXYZ\r\nQUIT\r\n", refuse=b"554 5.7.1 No service")
    assert d.banner == b"554 5.7.1 No service\r\n"
    assert d.codes() == [b"503", b"503", b"503", b"503", b"221"] and d.closed


def test_G3_minimum_command_set_is_recognised():
    for cmd in (b"EHLO x", b"HELO x", b"MAIL FROM:<a@b.test>", b"RCPT TO:<a@b.test>", b"DATA",
                b"RSET", b"NOOP", b"QUIT", b"VRFY x"):
        assert codes(cmd + b"\r\n")[0] != b"500", cmd


def test_G4_helo_reply_is_one_line():
    d = run(b"HELO client.test\r\n")
    assert d.replies() == [b"250 mx.test\r\n"] and d.s.protocol() == b"SMTP"


def test_G5_ehlo_reply_format():
    r = run(EHLO).replies()[0]
    lines = r[:-2].split(b"\r\n")
    assert lines[0] == b"250-mx.test" and lines[-1][:4] == b"250 "
    kws = [l[4:] for l in lines[1:]]
    for kw in (b"PIPELINING", b"SIZE 1048576", b"8BITMIME", b"ENHANCEDSTATUSCODES"):
        assert kw in kws, kws
    assert b"STARTTLS" not in kws and b"AUTH PLAIN LOGIN" not in kws
    assert run(EHLO, pol=policy(max_message_size=0)).replies()[0].split(b"\r\n")[2] == b"250-SIZE"


def test_G6_advertised_keywords_work():
    pol = policy(tls_available=True, auth_available=True, auth_without_tls=True)
    kws = run(EHLO, pol=pol).replies()[0]
    assert b"250-STARTTLS" in kws and b"250-AUTH PLAIN LOGIN" in kws and b"250 HELP" in kws
    for cmd in (b"STARTTLS", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"HELP",
                b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME"):
        c = run(EHLO + cmd + b"\r\n", pol=pol).codes()[-1]
        assert c[:1] in (b"2", b"3") and c not in (b"500", b"502"), (cmd, c)


def test_G7_ehlo_resets_the_transaction():
    d = run(EHLO + b"MAIL FROM:<a@b.test>\r\nEHLO again.test\r\nRCPT TO:<c@d.test>\r\n")
    assert d.codes() == [b"250", b"250", b"250", b"503"]
    d = run(EHLO + b"MAIL FROM:<a@b.test>\r\nEHLO\r\nRCPT TO:<c@d.test>\r\n")
    assert d.codes() == [b"250", b"250", b"501", b"250"]      # rejected EHLO: state unchanged
    assert codes(b"HELO\r\nMAIL FROM:<a@b.test>\r\n") == [b"501", b"503"]


def test_G8_ehlo_name_is_not_checked_against_the_client():
    assert codes(b"EHLO wrong.example\r\nMAIL FROM:<a@b.test>\r\n") == [b"250", b"250"]
    assert codes(b"EHLO [192.0.2.1]\r\nMAIL FROM:<a@b.test>\r\n") == [b"250", b"250"]


def test_G9_nested_mail_and_bad_mail():
    assert codes(EHLO + b"MAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n") == [b"250", b"250", b"503"]
    c = codes(EHLO + b"MAIL FROM:<bad\r\nMAIL FROM:<a@b.test>\r\n")
    assert c == [b"250", b"501", b"250"]


def test_G10_rcpt_without_mail():
    assert codes(EHLO + b"RCPT TO:<a@b.test>\r\n") == [b"250", b"503"]
    assert codes(b"RCPT TO:<a@b.test>\r\n") == [b"503"]


def test_G11_data_without_accepted_recipients():
    d = run(EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<deny@d.test>\r\nDATA\r\nNOOP\r\n")
    assert d.codes() == [b"250", b"250", b"550", b"554", b"250"]
    assert codes(EHLO + b"DATA\r\n") == [b"250", b"503"]


def test_G12_deferred_data_reply_can_fail():
    d = run(TXN + b"x\r\n.\r\nNOOP\r\n", fail_data=b"451 4.3.0 Spool write error")
    assert d.codes()[-2:] == [b"451", b"250"]
    s = Session(policy())
    s.receive(TXN + b"x\r\n.\r\nNOOP\r\n")
    seen = []
    while True:
        ev = s.next_event()
        if ev is None:
            break
        seen.append(ev[0])
        if ev[0] == "mail":
            s.accept_mail()
        elif ev[0] == "rcpt":
            s.accept_rcpt()
    assert seen[-1] == "data_end" and s.pending == "data"
    assert s.next_event() is None                    # nothing overtakes the pending 250
    s.message_accepted(b"ABC")
    assert s.next_event() == ("reply", b"250 2.0.0 Ok: queued as ABC\r\n")
    assert s.next_event() == ("reply", b"250 2.0.0 Ok\r\n")


def test_G13_rset_at_any_point():
    d = run(b"RSET\r\n" + EHLO + b"RSET\r\nMAIL FROM:<a@b.test>\r\nRSET\r\nRCPT TO:<c@d.test>\r\n"
            b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRSET\r\nDATA\r\n")
    assert d.codes() == [b"250", b"250", b"250", b"250", b"250", b"503", b"250", b"250", b"250", b"503"]
    assert not d.closed


def test_G14_no_parameters_on_rset_data_quit():
    assert codes(b"RSET x\r\nNOOP x\r\nQUIT x\r\n") == [b"501", b"250", b"501"]
    assert codes(TXN[:-2] + b" x\r\n")[-1] == b"501"


def test_G15_unknown_command_keeps_the_connection():
    d = run(b"FOO\r\nNOOP\r\nQUIT\r\nNOOP\r\n")
    assert d.codes() == [b"500", b"250", b"221"] and d.closed and d.kinds()[-1] == "close"


def test_G16_lost_connection_mid_data_gives_no_data_end():
    d = run(TXN + b"Subject: half\r\n")
    assert "data_end" not in d.kinds() and d.s.state != 0 and d.messages == []


def test_G17_one_reply_per_command():
    lines = [b"NOOP", b"FOO bar", b"", b"RSET", b"VRFY x", b"MAIL FROM:<a@b.test>", b"EHLO x",
             b"MAIL FROM:<a@b.test>", b"RCPT TO:<>", b"RCPT TO:<c@d.test>", b"HELP", b"EXPN x",
             b"\x00NOOP", b"MAIL FROM:<a@b.test>", b"RSET", b"TURN"]
    d = run(b"".join(l + b"\r\n" for l in lines))
    assert len(d.replies()) == len(lines)


def test_G18_unimplemented_vs_unknown():
    assert codes(b"TURN\r\nXYZZY\r\nETRN x\r\n") == [b"502", b"500", b"502"]


def test_G19_commands_allowed_before_ehlo():
    assert codes(b"NOOP\r\nHELP\r\nVRFY x\r\nRSET\r\nEXPN x\r\n") == [b"250", b"214", b"252", b"250", b"502"]


def test_G20_vrfy_252():
    assert run(b"VRFY postmaster\r\n").replies()[0].startswith(b"252 2.")
    assert codes(b"VRFY\r\n") == [b"501"]


def test_G21_expn_502_and_not_advertised():
    assert codes(b"EXPN x\r\n") == [b"502"]
    assert b"EXPN" not in run(EHLO).replies()[0]


def test_G22_help_214():
    assert codes(b"HELP\r\n") == [b"214"]


def test_G23_shutdown_and_L6_timeout_replies():
    s = Session(policy())
    assert s.shutdown_reply() == b"421 4.3.2 Service shutting down\r\n"
    s.receive(b"NOOP\r\n")
    assert s.next_event() is None
    assert Session(policy()).timeout_reply().startswith(b"421 4.4.2 ")


def test_G24_case_insensitive_and_trailing_whitespace():
    c = codes(b"ehlo x\r\nmail from:<a@b.test> \r\nRcPt To:<c@d.test>\t\r\ndata \r\n")
    assert c == [b"250", b"250", b"250", b"354"]


def test_G25_non_ascii_envelope_is_refused():
    assert codes(EHLO + b"MAIL FROM:<\xc3\xa9@x.test>\r\n")[-1] == b"501"
    assert codes(b"EHLO caf\xc3\xa9\r\n") == [b"501"]
    assert codes(b"NO\x00OP\r\n") == [b"500"]


# ---- 1.3 reply codes per command, every state x command --------------------------------------
ALLOWED = {b"EHLO": b"250 501 503", b"HELO": b"250 501 503", b"MAIL": b"250 501 503 552 555",
           b"RCPT": b"250 452 501 503 555", b"DATA": b"354 501 503 554", b"RSET": b"250 501",
           b"NOOP": b"250", b"VRFY": b"252 501", b"EXPN": b"502", b"HELP": b"214",
           b"QUIT": b"221 501", b"STARTTLS": b"220 454 501 503", b"AUTH": b"503 501 504 235 334",
           b"FOO": b"500"}
PREFIX = [b"", EHLO, EHLO + b"MAIL FROM:<a@b.test>\r\n",
          EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"]


def test_1_3_every_state_times_every_command():
    for prefix in PREFIX:
        for verb in sorted(ALLOWED):
            for arg in (b"", b" x", b" FROM:<a@b.test>", b" TO:<c@d.test>", b" PLAIN"):
                d = run(prefix + verb + arg + b"\r\n")
                code = d.codes()[-1]
                assert ALLOWED[verb].find(code) >= 0, (prefix, verb, arg, code)


# ---- 1.4 addresses ---------------------------------------------------------------------------
def envelope(mail, rcpt):
    d = run(EHLO + b"MAIL FROM:" + mail + b"\r\nRCPT TO:" + rcpt + b"\r\nDATA\r\nx\r\n.\r\n")
    return d.codes(), (d.messages[0][:2] if d.messages else None)


def test_A1_null_sender():
    assert envelope(b"<>", b"<c@d.test>") == ([b"250", b"250", b"250", b"354", b"250"], (b"", [b"c@d.test"]))
    assert codes(EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<>\r\n")[-1] == b"501"


def test_A2_source_route_is_stripped():
    got = envelope(b"<@r1.test,@r2.test:a@b.test>", b"<@r.test:Us@d.test>")[1]
    assert got == (b"a@b.test", [b"Us@d.test"])
    assert codes(EHLO + b"MAIL FROM:<@r_1.test:a@b.test>\r\n")[-1] == b"501"


def test_A3_quoted_local_parts():
    got = envelope(b'<"john smith"@b.test>', b'<"a\\"b"@d.test>')[1]
    assert got == (b'"john smith"@b.test', [b'"a\\"b"@d.test'])
    assert envelope(b'<"plain"@b.test>', b'<"x>y"@d.test>')[1] == (b"plain@b.test", [b'"x>y"@d.test'])
    assert codes(EHLO + b'MAIL FROM:<"unterminated@b.test>\r\n')[-1] == b"501"


def test_A4_local_part_case_preserved():
    assert envelope(b"<Smith@B.test>", b"<MiXeD@d.test>")[1] == (b"Smith@B.test", [b"MiXeD@d.test"])


def test_A5_postmaster_without_domain_is_accepted():
    d = run(EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<POSTMASTER>\r\nDATA\r\nx\r\n.\r\n")
    assert d.codes() == [b"250", b"250", b"250", b"354", b"250"]
    assert "rcpt" not in d.kinds() and d.messages[0][1] == [b"POSTMASTER"]
    assert codes(EHLO + b"MAIL FROM:<postmaster>\r\n")[-1] == b"501"


def test_A6_address_literals():
    for lit in (b"[192.0.2.1]", b"[IPv6:2001:db8::1]", b"[IPv6:::1]", b"[ipv6:1:2:3:4:5:6:7:8]",
                b"[IPv6:::ffff:192.0.2.1]"):
        assert envelope(b"<a@b.test>", b"<u@" + lit + b">")[1] == (b"a@b.test", [b"u@" + lit]), lit
    for lit in (b"[192.0.2.256]", b"[1.2.3]", b"[IPv6:1::2::3]", b"[IPv6:12345::1]", b"[foo:bar]",
                b"[IPv6:1:2:3:4:5:6:7]", b"[192.0.2.1"):
        assert codes(EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@" + lit + b">\r\n")[-1] == b"501", lit


def test_A7_domain_characters():
    for bad in (b"<u@ex_ample.com>", b"<u@-a.com>", b"<u@a-.com>", b"<u@a..com>", b"<u@a.com.>",
                b"<u@>", b"<u>", b"<@a.com>", b"<u@a.com", b"u@a.com", b"<u@a.com>x", b"<a..b@c.com>",
                b"<.a@c.com>", b"<a b@c.com>"):
        assert codes(EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:" + bad + b"\r\n")[-1] == b"501", bad


def test_A8_control_characters_in_addresses():
    assert codes(EHLO + b"MAIL FROM:<a\x01@b.test>\r\n")[-1] in (b"500", b"501")
    assert codes(EHLO + b"MAIL FROM:<a\x7f@b.test>\r\n")[-1] in (b"500", b"501")


def test_A9_length_limits():
    local = b"l" * 64
    dom = (b"d" * 63 + b".") * 2 + b"e" * 50 + b".test"
    assert envelope(b"<" + local + b"@b.test>", b"<c@" + dom + b">")[0][-1] == b"250"
    assert codes(EHLO + b"MAIL FROM:<" + local + b"x@b.test>\r\n")[-1] == b"501"
    long_path = b"<" + b"a" * 60 + b"@" + (b"d" * 60 + b".") * 4 + b"test>"
    assert codes(EHLO + b"MAIL FROM:" + long_path + b"\r\n")[-1] == b"501"
    assert codes(EHLO + b"MAIL FROM:<a@" + b"d" * 64 + b".test>\r\n")[-1] == b"501"


def test_mail_from_syntax_strict_but_space_tolerated():
    assert codes(EHLO + b"MAIL FROM: <a@b.test>\r\n")[-1] == b"250"
    assert codes(EHLO + b"MAIL FROM <a@b.test>\r\n")[-1] == b"501"
    assert codes(EHLO + b"MAIL FROM:a@b.test\r\n")[-1] == b"501"
    assert codes(EHLO + b"MAIL TO:<a@b.test>\r\n")[-1] == b"501"
    assert codes(EHLO + b"MAIL FROM:<a@b.test>SIZE=1\r\n")[-1] == b"501"


# ---- 1.5 limits ------------------------------------------------------------------------------
def test_L1_512_octet_command_line():
    line = b"VRFY " + b"x" * (512 - 7) + b"\r\n"
    assert len(line) == 512 and codes(line) == [b"252"]
    line = b"VRFY " + b"x" * (512 - 6) + b"\r\nNOOP\r\n"
    assert codes(line) == [b"500", b"250"]
    mail = b"MAIL FROM:<" + b"a" * 60 + b"@b.test> SIZE=100 AUTH=" + b"x" * 480 + b"\r\n"
    assert len(mail) > 512 and codes(EHLO + mail)[-1] == b"250"


def test_L1_huge_line_one_reply_bounded_buffer():
    d = Driver()
    piece = b"A" * 4096
    for _ in range(245):                        # ~1,000,000 octets, no CRLF
        d.feed(piece)
        assert d.s.wants_data() and len(d.s._buf) < 16384
    d.feed(b"MAIL FROM:<smuggled@x.test>\r\nNOOP\r\n")
    assert d.codes() == [b"500", b"250"]       # the tail of the long line is never a command
    assert d.replies()[0].startswith(b"500 5.5.6")


def test_L3_64k_message():
    body = (b"y" * 76 + b"\r\n") * 900
    d = run(TXN + body + b".\r\n")
    assert d.codes()[-1] == b"250" and d.messages[0][2] == body and len(body) > 65536


def test_L4_max_recipients():
    rc = b"".join(b"RCPT TO:<r%d@d.test>\r\n" % i for i in range(101))
    c = codes(EHLO + b"MAIL FROM:<a@b.test>\r\n" + rc + b"DATA\r\n")
    assert c[2:102] == [b"250"] * 100 and c[102] == b"452" and c[103] == b"354"
    c = codes(EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<a@d.test>\r\nRCPT TO:<b@d.test>\r\n",
              pol=policy(max_recipients=1))
    assert c[-1] == b"452" and run(EHLO, pol=policy(max_recipients=1)).replies()


# ---- 1.6 trace ---------------------------------------------------------------------------------
def test_T5_received_loop_limit():
    hdr = b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    d = run(TXN + hdr * 101 + b"Subject: x\r\n\r\nbody\r\n.\r\nNOOP\r\n")
    assert d.codes()[-2:] == [b"554", b"250"] and d.replies()[-2].startswith(b"554 5.4.6")
    d = run(TXN + hdr * 100 + b"Subject: x\r\n\r\n" + hdr * 200 + b".\r\n")
    assert d.codes()[-1] == b"250" and d.s.data.received == 100   # body Received: not counted
    d = Driver()
    d.feed(TXN + hdr * 30 + b"received: x\r\nX-Received: y\r\n \treceived: z\r\n\r\n")
    assert d.s.data.received == 31 and d.s.data.header_bytes == len(hdr) * 30 + 13 + 15 + 15 + 2


def test_T3_protocol_names():
    pol = policy(tls_available=True, auth_available=True)
    d = run(EHLO + b"STARTTLS\r\n", pol=pol)
    d.feed(EHLO)
    assert d.s.protocol() == b"ESMTPS"
    d.feed(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    assert d.s.protocol() == b"ESMTPSA" and d.s.auth_user == b"alice"
    assert run(EHLO).s.protocol() == b"ESMTP"


# ---- 1.9 extensions ----------------------------------------------------------------------------
def test_X1_size():
    pol = policy(max_message_size=100)
    assert codes(EHLO + b"MAIL FROM:<a@b.test> SIZE=101\r\n", pol=pol)[-1] == b"552"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> SIZE=100\r\n", pol=pol)[-1] == b"250"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> SIZE=1x\r\n", pol=pol)[-1] == b"501"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> SIZE=999999999999999999999\r\n")[-1] == b"501"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> SIZE=99999999999999999999\r\n")[-1] == b"552"
    d = run(TXN + b"x" * 98 + b"\r\n.\r\n", pol=pol)          # exactly 100 octets
    assert d.codes()[-1] == b"250"
    d = run(TXN + (b"x" * 60 + b"\r\n") * 3 + b"RSET\r\nQUIT\r\n.\r\nNOOP\r\n", pol=pol)
    assert d.codes()[-2:] == [b"552", b"250"] and d.replies()[-2].startswith(b"552 5.3.4")
    assert not d.closed and d.messages == []
    assert d.kinds().count("data_abort") == 1


def test_X2_pipelined_replies_in_order():
    d = run(EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<deny@x.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert d.codes() == [b"250", b"250", b"550", b"250", b"354"]
    d = run(EHLO + b"MAIL FROM:<bad@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nbody\r\n.\r\n")
    assert d.codes()[:4] == [b"250", b"550", b"503", b"503"]    # no transaction: body lines are commands
    two = TXN + b"one\r\n.\r\nMAIL FROM:<e@f.test>\r\nRCPT TO:<g@h.test>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n"
    d = splits_agree(two)
    assert [m[2] for m in d.messages] == [b"one\r\n", b"two\r\n"] and d.closed


def test_X3_strict_pipelining_sync_points():
    pol = policy(strict_pipelining=True)
    d = run(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\n", pol=pol)
    assert d.codes() == [b"554"] and d.closed
    d = run(TXN + b"body\r\n.\r\n", pol=pol)
    assert d.codes()[-1] == b"554" and d.closed and d.messages == []
    d = Driver(pol=pol)
    for part in (EHLO, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", b"x\r\n.\r\n"):
        d.feed(part)
    assert d.codes() == [b"250", b"250", b"250", b"354", b"250"]


def test_X4_8bitmime_body_parameter():
    assert codes(EHLO + b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\n")[-1] == b"250"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> body=7bit\r\n")[-1] == b"250"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n")[-1] == b"501"
    d = run(TXN + b"caf\xc3\xa9 \xff\r\n.\r\n")
    assert d.messages[0][2] == b"caf\xc3\xa9 \xff\r\n"


def test_X5_enhanced_codes_on_every_reply():
    d = run(b"NOOP\r\nFOO\r\n" + TXN + b"x\r\n.\r\nVRFY a\r\nHELP\r\nRSET x\r\nQUIT\r\n")
    for r in d.replies():
        check_reply(r)


def test_X6_starttls():
    pol = policy(tls_available=True)
    d = run(EHLO + b"STARTTLS\r\nNOOP\r\nMAIL FROM:<a@b.test>\r\n", pol=pol, tls=False)
    assert d.codes() == [b"250", b"220"] and d.kinds()[-1] == "starttls"
    d.feed(b"NOOP\r\n")                      # plaintext before the handshake: dropped
    assert d.s.pending == "tls" and not d.s.wants_data()
    d.s.tls_started()
    d.feed(b"MAIL FROM:<a@b.test>\r\n" + EHLO + b"STARTTLS\r\n")
    assert d.codes()[2:] == [b"503", b"250", b"503"]
    assert b"STARTTLS" not in d.replies()[3] and d.s.tls_active
    assert codes(EHLO + b"STARTTLS x\r\n", pol=pol)[-1] == b"501"
    assert codes(EHLO + b"STARTTLS\r\n")[-1] == b"454"
    assert codes(TXN[:-6] + b"STARTTLS\r\n", pol=pol)[-1] == b"503"


def test_X6_starttls_forgets_helo_transaction_and_auth():
    pol = policy(tls_available=True, auth_available=True, auth_without_tls=True)
    d = run(EHLO + b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", pol=pol)
    assert d.s.auth_user == b"alice"
    d.feed(b"STARTTLS\r\n" + EHLO)         # the pipelined plaintext EHLO is discarded
    assert d.s.auth_user is None and d.s.helo_name is None and d.s.tls_active
    d.feed(EHLO + b"MAIL FROM:<a@b.test>\r\n")
    assert d.s.helo_name == b"client.test" and d.codes()[-3:] == [b"220", b"250", b"250"]


def auth(lines, **kw):
    pol = policy(auth_available=True, auth_without_tls=True, **kw)
    return run(EHLO + b"".join(l + b"\r\n" for l in lines), pol=pol)


def test_X7_auth_plain_and_login():
    d = auth([b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="])           # \0alice\0secret
    assert d.codes()[-1] == b"235" and ("auth", b"PLAIN", b"alice", b"secret") in d.events
    d = auth([b"AUTH PLAIN", b"YWxpY2UAYWxpY2UAc2VjcmV0"])  # alice\0alice\0secret
    assert d.replies()[1] == b"334 \r\n" and d.codes()[-1] == b"235"
    d = auth([b"auth login", b"YWxpY2U=", b"c2VjcmV0", b"MAIL FROM:<a@b.test>"])
    assert d.replies()[1:3] == [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n"]
    assert d.codes()[-2:] == [b"235", b"250"] and d.s.auth_user == b"alice"
    d = auth([b"AUTH LOGIN YWxpY2U=", b"d3Jvbmc="])
    assert d.codes()[1:] == [b"334", b"535"] and d.s.auth_user is None


def test_X7_auth_errors():
    assert auth([b"AUTH PLAIN", b"*"]).codes()[-1] == b"501"
    assert auth([b"AUTH LOGIN", b"*", b"NOOP"]).codes()[-2:] == [b"501", b"250"]
    assert auth([b"AUTH CRAM-MD5"]).codes()[-1] == b"504"
    assert auth([b"AUTH"]).codes()[-1] == b"501"
    assert auth([b"AUTH PLAIN not-base64!"]).replies()[-1].startswith(b"501 5.5.2")
    assert auth([b"AUTH PLAIN YWJj"]).codes()[-1] == b"501"                  # no NULs
    assert auth([b"AUTH PLAIN =", b"NOOP"]).codes()[-2:] == [b"501", b"250"]
    assert auth([b"AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA=="]).codes()[-1] == b"535"  # authzid bob
    again = b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="
    assert auth([again, again]).codes()[-1] == b"503"
    assert auth([b"MAIL FROM:<a@b.test>", b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="]).codes()[-1] == b"503"
    assert auth([b"AUTH LOGIN", b"x" * 13000, b"NOOP"]).codes()[-2:] == [b"500", b"250"]
    long_ok = b"AUTH PLAIN " + b"QUFB" * 2000                                 # 8011-octet line
    assert auth([long_ok]).codes()[-1] == b"501"                              # parsed, no 500
    assert codes(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n") == [b"503"]        # before EHLO


def test_X7_auth_not_offered_in_clear():
    pol = policy(auth_available=True, tls_available=True)
    d = run(EHLO + b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", pol=pol)
    assert b"AUTH" not in d.replies()[0] and d.codes()[-1] == b"538"
    assert codes(EHLO + b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")[-1] == b"503"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> AUTH=<>\r\n")[-1] == b"250"


def test_X7_auth_result_custom_reply():
    pol = policy(auth_available=True, auth_without_tls=True)
    s = Session(pol)
    s.receive(EHLO + b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nNOOP\r\n")
    assert s.next_event()[0] == "reply" and s.next_event()[0] == "auth"
    assert s.next_event() is None and s.pending == "auth"
    s.auth_result(False, b"454 4.7.0 Temporary authentication failure")
    assert s.next_event() == ("reply", b"454 4.7.0 Temporary authentication failure\r\n")
    assert s.next_event()[1][:3] == b"250"


def test_X8_X10_unoffered_extensions():
    assert codes(EHLO + b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test> NOTIFY=NEVER\r\n")[-1] == b"555"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> RET=FULL\r\n")[-1] == b"555"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> SIZE=1 SIZE=2\r\n")[-1] == b"501"
    assert codes(EHLO + b"MAIL FROM:<a@b.test> =x\r\n")[-1] == b"501"
    ehlo = run(EHLO).replies()[0]
    assert b"CHUNKING" not in ehlo and b"DSN" not in ehlo and b"SMTPUTF8" not in ehlo
    assert codes(TXN[:-6] + b"BDAT 10 LAST\r\n")[-1] == b"502"


# ---- 1.12 smuggling ------------------------------------------------------------------------------
SMUGGLE = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@d.test>\r\nDATA\r\nsmuggled\r\n"
VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n",
            b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n.\r\r\n", b"\r\n.\n\r\n", b"\r\n .\r\n",
            b"\r\n.\r\n"[:4] + b"\r\r\n", b"\r\n\n.\r\n", b"\r\n\r.\r\n"]
# These contain the raw bytes CRLF.CRLF, so they ARE the end of data for every peer (SM1): the
# session ends there too (refusing the message in reject mode because of the earlier bare CR/LF).
GENUINE = [b"\r\r\n.\r\n", b"\n\r\n.\r\n", b"\r\n.\r\r\n.\r\n"]


def smuggle(variant, mode):
    data = TXN + b"Subject: s\r\n\r\nbody" + variant + SMUGGLE + b"\r\n.\r\nNOOP\r\n"
    return splits_agree(data, pol=policy(bare_newlines=mode))


def test_SM1_SM2_variants_never_give_two_messages_strict():
    for v in VARIANTS:
        d = smuggle(v, "reject")
        bare = v.replace(b"\r\n", b"").find(b"\r") >= 0 or v.replace(b"\r\n", b"").find(b"\n") >= 0
        assert len(d.messages) == (0 if bare else 1), v
        assert "mail" not in [e[0] for e in d.events[2:]], v
        assert d.codes()[-2:] == ([b"550", b"250"] if bare else [b"250", b"250"]), (v, d.codes())
        assert d.codes().count(b"354") == 1, v


def test_SM4_variants_in_normalize_mode_give_one_message():
    for v in VARIANTS:
        d = smuggle(v, "normalize")
        assert len(d.messages) == 1 and d.messages[0][0] == b"a@b.test", v
        body = d.messages[0][2]
        assert body.find(b"MAIL FROM:<evil@x.test>\r\n") > 0, (v, body)
        assert d.codes().count(b"354") == 1 and d.codes()[-2:] == [b"250", b"250"], v
        assert body.replace(b"\r\n", b"").find(b"\r") < 0 and body.replace(b"\r\n", b"").find(b"\n") < 0


def test_SM1_raw_crlf_dot_crlf_is_the_end_even_after_a_bare_cr_or_lf():
    for v in GENUINE:
        d = smuggle(v, "reject")
        assert d.codes().count(b"354") == 2 and d.codes()[-6] == b"550", (v, d.codes())
        assert [m[0] for m in d.messages] == [b"evil@x.test"], v
        d = smuggle(v, "normalize")
        assert [m[0] for m in d.messages] == [b"a@b.test", b"evil@x.test"], v


def test_SM3_bare_lf_rejected_then_stream_in_sync():
    d = run(TXN + b"a\nb\r\n.\r\nNOOP\r\n")
    assert d.codes()[-2:] == [b"550", b"250"] and d.messages == []
    assert d.replies()[-2].startswith(b"550 5.6.0")
    d = run(TXN + b"a\rb\r\n.\r\nNOOP\r\n")
    assert d.codes()[-2:] == [b"550", b"250"]


def test_SM4_normalize_mode():
    d = run(TXN + b"a\nb\r\n.\r\n", pol=policy(bare_newlines="normalize"))
    assert d.codes()[-1] == b"250" and d.messages[0][2] == b"a\r\nb\r\n"
    d = run(TXN + b"a\n.\r\nMAIL FROM:<x@y.test>\r\n.\r\n", pol=policy(bare_newlines="normalize"))
    assert d.messages[0][2] == b"a\r\n\r\nMAIL FROM:<x@y.test>\r\n"
    d = run(TXN + b"a\n..b\r\nc\rd\r\n.\r\n", pol=policy(bare_newlines="normalize"))
    assert d.messages[0][2] == b"a\r\n.b\r\nc\r\nd\r\n"


def test_SM6_terminator_split_at_every_byte():
    for mode in ("reject", "normalize"):
        d = splits_agree(TXN + b"x\r\n..y\r\n.\r\nNOOP\r\n", pol=policy(bare_newlines=mode))
        assert d.messages[0][2] == b"x\r\n.y\r\n" and d.codes()[-1] == b"250"
    splits_agree(b"NOOP\r\nNO\nOP\r\n" + b"V" * 600 + b"\r\nRSET\r\n")
    splits_agree(TXN + b"q" * 2500 + b"\r\n" + b"r" * 1023 + b"\r\r\n.\r\n")
    # the limit of the line after an over-long one is chosen by that line's own verb (MAIL: 1038)
    d = splits_agree(EHLO + b"y" * 600 + b"\r\nMAIL FROM:<a@b.test> AUTH=" + b"x" * 490 + b"\r\n")
    assert d.codes() == [b"250", b"500", b"250"]


def test_SM7_oversized_body_commands_are_not_parsed():
    pol = policy(max_message_size=50)
    d = run(TXN + b"x" * 100 + b"\r\nRSET\r\nQUIT\r\nMAIL FROM:<a@b.test>\r\n.\r\n", pol=pol)
    assert d.codes()[-1] == b"552" and not d.closed and d.codes().count(b"221") == 0


# ---- chunking, events, API misuse ---------------------------------------------------------------
def test_body_chunks_are_bounded_and_reassemble():
    body = b"".join(b"line %d ......................................\r\n" % i for i in range(2000))
    d = Driver()
    d.feed(TXN)
    for i in range(0, len(body), 7919):
        d.feed(body[i:i + 7919])
    d.feed(b".\r\n")
    chunks = [e[1] for e in d.events if e[0] == "body"]
    assert b"".join(chunks) == body and max(len(c) for c in chunks) == CHUNK
    assert d.s.data.size == len(body) and d.messages[0][2] == body


def test_envelope_on_data_start():
    d = run(EHLO + b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<deny@d.test>\r\n"
            b"RCPT TO:<e@d.test>\r\nDATA\r\n")
    assert d.events[-1] == ("data_start", b"a@b.test", [b"c@d.test", b"e@d.test"])
    assert ("mail", b"a@b.test", [(b"BODY", b"8BITMIME")]) in d.events


def test_verdict_misuse_raises():
    s = Session(policy())
    for call in (s.accept_mail, s.accept_rcpt, s.tls_started):
        try:
            call()
            assert False
        except SessionError:
            pass
    s.receive(EHLO + b"MAIL FROM:<a@b.test>\r\n")
    s.next_event()
    assert s.next_event()[0] == "mail"
    for bad in (b"250 fine", b"55", b"550 x\r\n250 y", b"abc def", b"5501"):
        try:
            s.reject_mail(bad)
            assert False, bad
        except (ValueError, SessionError):
            pass
    s.reject_mail("451 4.3.1 Insufficient system storage")
    assert s.next_event() == ("reply", b"451 4.3.1 Insufficient system storage\r\n")


def test_P3_too_many_errors_closes():
    d = run(b"FOO\r\n" * 25, pol=policy(max_errors=20))
    assert d.codes() == [b"500"] * 20 + [b"421"] and d.closed
    assert len(run(b"FOO\r\n" * 25, pol=policy(max_errors=0)).codes()) == 25


def test_close_drops_further_input():
    d = run(b"QUIT\r\n")
    d.feed(b"NOOP\r\n")
    assert d.codes() == [b"221"] and not d.s.wants_data()


def test_replies_helpers():
    assert smtpproto.multiline(b"250", [b"a", b"b"]) == b"250-a\r\n250 b\r\n"
    assert smtpproto.b64decode(b"=") == b"" and smtpproto.b64decode(b"YQ") is None
    assert smtpproto.b64decode(b"Y=Q=") is None and smtpproto.b64decode(b"YQ==") == b"a"
