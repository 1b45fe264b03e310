"""tinymta.client: the sans-IO SMTP client, fed scripted server replies, checked byte by byte.

Plain asserts, no pytest: runs under pytest on CPython and under tests/mp_runner.py on
MicroPython.  Names cite protocol.md rows (L7, Q7-Q10, XC1-XC5, SM5) where one applies.
"""
from tinymta.client import CLOSED, Client, ClientError
from tinymta import clientproto
from tinymta.session import Session, Policy

HELO = b"pi.lan.example"
GREET = b"220 mx.test ESMTP\r\n"
EHLO_SENT = b"EHLO pi.lan.example\r\n"
EHLO_PIPE = (b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
             b"250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n")
EHLO_PLAIN = b"250-mx.test\r\n250 SIZE 1000\r\n"
EHLO_TLS = b"250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
EHLO_AUTH = b"250-mx.test\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
USER, PASSWORD = b"alice", b"secret"
PLAIN_IR = b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"       # base64("\0alice\0secret")
A, R1, R2 = b"a@pi.lan.example", b"b@x.test", b"c@y.test"
BATCH = b"MAIL FROM:<a@pi.lan.example> SIZE=100\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"


def drain(c):
    out = []
    while True:
        ev = c.next_event()
        if ev is None:
            assert c.last_error is None, repr(c.last_error)
            return out
        out.append(ev)


def feed(c, data):
    c.receive(data)
    return drain(c)


def feed_bytewise(c, data):
    out = []
    for i in range(len(data)):
        out += feed(c, data[i:i + 1])
    return out


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return True
    raise AssertionError("%r did not raise %r" % (fn, exc))


def connected(ehlo=EHLO_PIPE, **kw):
    """A client past the greeting and EHLO, with ("ready",) consumed."""
    c = Client(HELO, **kw)
    assert feed(c, GREET) == [("send", EHLO_SENT)]
    assert feed(c, ehlo) == [("ready",)]
    return c


def error(stage, code, text, temporary=True, quit=False):
    return ([("send", b"QUIT\r\n")] if quit else []) + [("error", stage, code, text, temporary),
                                                        ("closed",)]


def deliver(c, body=b"Subject: t\r\n\r\nhi\r\n", size=100):
    """One pipelined two-recipient message, both accepted; returns the body bytes written."""
    c.send_message(A, [R1, R2], size=size)
    assert drain(c) == [("send", BATCH.replace(b"SIZE=100", b"SIZE=%d" % size))]
    assert feed(c, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n") == [
        ("rcpt", 0, 250, b"2.1.5 Ok"), ("rcpt", 1, 250, b"2.1.5 Ok"), ("body",)]
    wire = c.body(body) + c.body_end()
    assert feed(c, b"250 2.0.0 Ok: queued as Q1\r\n") == [
        ("done", 250, b"2.0.0 Ok: queued as Q1"), ("ready",)]
    return wire


# ---- greeting, EHLO, HELO ---------------------------------------------------------------------
def test_greeting_ehlo_ready_and_capabilities():
    c = connected()
    assert c.esmtp and c.pipelining and not c.tls_active
    assert c.extensions[b"SIZE"] == b"1000" and b"8BITMIME" in c.extensions
    assert clientproto.size_limit(c.extensions) == 1000


def test_replies_split_at_every_byte_multiline():
    c = Client(HELO)
    assert feed_bytewise(c, b"220-mx.test ESMTP\r\n220 welcome\r\n") == [("send", EHLO_SENT)]
    assert feed_bytewise(c, EHLO_PIPE) == [("ready",)]
    c.send_message(A, [R1, R2], size=100)
    assert drain(c) == [("send", BATCH)]
    evs = feed_bytewise(c, b"250 2.1.0 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n250 ok\r\n354 go\r\n")
    assert evs == [("rcpt", 0, 550, b"5.1.1 no such user"), ("rcpt", 1, 250, b"ok"), ("body",)]


def test_bare_lf_replies_are_accepted():
    c = Client(HELO)
    assert feed(c, b"220 mx\n") == [("send", EHLO_SENT)]
    assert feed(c, b"250-mx\n250 PIPELINING\n") == [("ready",)]
    assert c.pipelining


def test_greeting_554_is_temporary_and_quits():
    c = Client(HELO)
    assert feed(c, b"554 5.7.1 No SMTP service here\r\n") == error(
        b"GREETING", 554, b"5.7.1 No SMTP service here", True, quit=True)
    assert c.next_event() is None
    c.receive(b"221 bye\r\n")
    assert c.next_event() is None


def test_greeting_421_closes_without_quit():
    c = Client(HELO)
    assert feed(c, b"421 4.3.2 busy\r\n") == error(b"GREETING", 421, b"4.3.2 busy")


def test_Q10_ehlo_refused_falls_back_to_helo_without_extensions():
    c = Client(HELO)
    feed(c, GREET)
    assert feed(c, b"502 5.5.1 EHLO not implemented\r\n") == [("send", b"HELO pi.lan.example\r\n")]
    assert feed(c, b"250 mx.test\r\n") == [("ready",)]
    assert not c.esmtp and not c.pipelining and c.extensions == {}
    c.send_message(A, [R1], size=100)                  # no SIZE=, no pipelining
    assert drain(c) == [("send", b"MAIL FROM:<a@pi.lan.example>\r\n")]
    assert feed(c, b"250 ok\r\n") == [("send", b"RCPT TO:<b@x.test>\r\n")]
    assert feed(c, b"250 ok\r\n") == [("rcpt", 0, 250, b"ok"), ("send", b"DATA\r\n")]
    assert feed(c, b"354 go\r\n") == [("body",)]


def test_ehlo_and_helo_refused_is_permanent():
    c = Client(HELO)
    feed(c, GREET)
    assert feed(c, b"550 5.7.1 go away\r\n") == [("send", b"HELO pi.lan.example\r\n")]
    assert feed(c, b"550 5.7.1 go away\r\n") == error(b"EHLO", 550, b"5.7.1 go away", False, quit=True)


def test_ehlo_4xx_is_temporary():
    c = Client(HELO)
    feed(c, GREET)
    assert feed(c, b"451 4.3.0 later\r\n") == error(b"EHLO", 451, b"4.3.0 later", True, quit=True)


def test_bad_construction_raises():
    raises(ValueError, Client, HELO, "always")
    raises(ValueError, Client, b"bad name")
    raises(ValueError, Client, b"x\r\nMAIL")
    raises(ValueError, Client, HELO, "none", None, False, {"forever": 1})


# ---- transactions -----------------------------------------------------------------------------
def test_Q6_pipelined_batch_then_reuse_without_rset():
    c = connected()
    assert deliver(c) == b"Subject: t\r\n\r\nhi\r\n.\r\n"
    c.send_message(A, [R1], size=7)                    # the connection carries a second message
    assert drain(c) == [("send", b"MAIL FROM:<a@pi.lan.example> SIZE=7\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")]


def test_non_pipelined_one_command_per_reply():
    c = connected(EHLO_PLAIN)
    assert not c.pipelining
    c.send_message(A, [R1, R2], size=100)
    assert drain(c) == [("send", b"MAIL FROM:<a@pi.lan.example> SIZE=100\r\n")]
    assert feed(c, b"250 2.1.0 Ok\r\n") == [("send", b"RCPT TO:<b@x.test>\r\n")]
    assert feed(c, b"450 4.2.0 greylisted\r\n") == [("rcpt", 0, 450, b"4.2.0 greylisted"),
                                                    ("send", b"RCPT TO:<c@y.test>\r\n")]
    assert feed(c, b"250 2.1.5 Ok\r\n") == [("rcpt", 1, 250, b"2.1.5 Ok"), ("send", b"DATA\r\n")]
    assert feed(c, b"354 go\r\n") == [("body",)]
    assert c.body(b"x") + c.body_end() == b"x\r\n.\r\n"
    assert feed(c, b"250 2.0.0 Ok\r\n") == [("done", 250, b"2.0.0 Ok"), ("ready",)]


def test_XC4_size_param_and_too_big_is_refused_without_sending():
    c = connected()
    c.send_message(A, [R1], size=5000)
    assert drain(c) == [("done", 552, b"5.3.4 Message size exceeds fixed maximum message size (5000 > 1000)"),
                        ("ready",)]
    c.send_message(A, [R1])                            # size unknown: no SIZE=, no check
    assert drain(c) == [("send", b"MAIL FROM:<a@pi.lan.example>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")]


def test_size_without_a_number_is_no_limit():
    c = connected(b"250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n")
    c.send_message(A, [R1], size=10 ** 9)
    assert drain(c) == [("send", b"MAIL FROM:<a@pi.lan.example> SIZE=1000000000\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")]


def test_Q10_8bit_only_with_8bitmime():
    c = connected()
    c.send_message(A, [R1], size=10, eight_bit=True)
    assert drain(c) == [("send", b"MAIL FROM:<a@pi.lan.example> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")]
    c = connected(EHLO_PLAIN)
    c.send_message(A, [R1], size=10, eight_bit=True)   # never mangled, never sent
    assert drain(c) == [("done", 554, clientproto.T_NO_8BIT), ("ready",)]
    c.send_message(A, [R1], size=10)
    assert drain(c) == [("send", b"MAIL FROM:<a@pi.lan.example> SIZE=10\r\n")]


def test_Q5_mail_refused_pipelined_drains_the_batch():
    c = connected()
    c.send_message(A, [R1, R2], size=100)
    drain(c)
    evs = feed(c, b"550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert evs == [("done", 550, b"5.7.1 sender refused")]     # no rcpt events, DATA reply pending
    assert feed(c, b"503 5.5.1 need MAIL\r\n") == [("ready",)]
    c.send_message(A, [R1], size=100)                  # no transaction open: no RSET
    assert drain(c) == [("send", b"MAIL FROM:<a@pi.lan.example> SIZE=100\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")]


def test_mail_refused_non_pipelined_sends_no_rcpt():
    c = connected(EHLO_PLAIN)
    c.send_message(A, [R1], size=100)
    drain(c)
    assert feed(c, b"451 4.3.0 try later\r\n") == [("done", 451, b"4.3.0 try later"), ("ready",)]


def test_XC5_all_rcpts_refused_then_data_refused_then_rset_before_next():
    c = connected()
    c.send_message(A, [R1, R2], size=100)
    drain(c)
    evs = feed(c, b"250 ok\r\n550 5.1.1 no\r\n452 4.5.3 too many\r\n554 5.5.1 no valid recipients\r\n")
    assert evs == [("rcpt", 0, 550, b"5.1.1 no"), ("rcpt", 1, 452, b"4.5.3 too many"),
                   ("done", 452, b"4.5.3 too many"), ("ready",)]
    c.send_message(A, [R1], size=100)
    assert drain(c) == [("send", b"RSET\r\nMAIL FROM:<a@pi.lan.example> SIZE=100\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")]
    assert feed(c, b"250 2.0.0 Ok\r\n250 ok\r\n250 ok\r\n354 go\r\n") == [("rcpt", 0, 250, b"ok"), ("body",)]


def test_XC5_all_rcpts_refused_but_354_sends_an_empty_message():
    c = connected()
    c.send_message(A, [R1], size=100)
    drain(c)
    assert feed(c, b"250 ok\r\n550 5.1.1 no\r\n354 go ahead\r\n") == [
        ("rcpt", 0, 550, b"5.1.1 no"), ("done", 550, b"5.1.1 no"), ("send", b".\r\n")]
    assert feed(c, b"554 5.5.1 no valid recipients\r\n") == [("ready",)]


def test_all_rcpts_refused_non_pipelined_sends_no_data_and_rsets_later():
    c = connected(EHLO_PLAIN)
    c.send_message(A, [R1], size=100)
    drain(c)
    feed(c, b"250 ok\r\n")
    assert feed(c, b"550 5.1.1 no\r\n") == [("rcpt", 0, 550, b"5.1.1 no"), ("done", 550, b"5.1.1 no"),
                                           ("ready",)]
    c.send_message(A, [R1], size=100)
    assert drain(c) == [("send", b"RSET\r\n")]
    assert feed(c, b"250 ok\r\n") == [("send", b"MAIL FROM:<a@pi.lan.example> SIZE=100\r\n")]


def test_Q9_data_refused_no_body_and_rset_before_next():
    c = connected()
    c.send_message(A, [R1], size=100)
    drain(c)
    assert feed(c, b"250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n") == [
        ("rcpt", 0, 250, b"ok"), ("done", 451, b"4.3.0 not now"), ("ready",)]
    c.send_message(A, [R1], size=100)
    assert drain(c)[0][1].startswith(b"RSET\r\nMAIL FROM:")


def test_Q8_final_reply_codes_and_no_rset_after():
    for reply, code in ((b"451 4.3.0 later\r\n", 451), (b"554 5.7.1 spam\r\n", 554), (b"299 odd\r\n", 299)):
        c = connected()
        c.send_message(A, [R1], size=100)
        drain(c)
        feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n")
        c.body(b"x\r\n")
        c.body_end()
        assert feed(c, reply) == [("done", code, reply[4:-2]), ("ready",)]
        c.send_message(A, [R1], size=100)
        assert drain(c)[0][1].startswith(b"MAIL FROM:")


# ---- the body (SM5, RFC 5321 §4.5.2) ------------------------------------------------------------
def in_body():
    c = connected()
    c.send_message(A, [R1], size=100)
    drain(c)
    assert feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n")[-1] == ("body",)
    return c


def test_dot_stuffing_at_every_line_start_and_across_chunks():
    c = in_body()
    assert c.body(b".\r\n..\r\n.x\r\nmid.dle\r\n") == b"..\r\n...\r\n..x\r\nmid.dle\r\n"
    assert c.body(b".starts the next chunk\r\nends with a dot.") == b"..starts the next chunk\r\nends with a dot."
    assert c.body(b".not at a line start\r") == b".not at a line start"       # CR held back
    assert c.body(b"\n.") == b"\r\n.."
    assert c.body_end() == b"\r\n.\r\n"


def test_SM5_stray_cr_and_lf_become_crlf():
    c = in_body()
    assert c.body(b"a\nb\rc\r\r\nd\n\re\r\n") == b"a\r\nb\r\nc\r\n\r\nd\r\n\r\ne\r\n"
    assert c.body(b"x\n.\r\nMAIL FROM:<evil@x>\r\n") == b"x\r\n..\r\nMAIL FROM:<evil@x>\r\n"
    assert c.body(b"y\n.\n") == b"y\r\n..\r\n"
    assert c.body(b"z\r") == b"z"
    assert c.body(b"\r") == b"\r\n"                    # the held CR was bare; this one is held
    assert c.body(b"\n") == b"\r\n"                    # ... and this one was a CRLF
    assert c.body_end() == b".\r\n"


def test_body_end_ensures_the_final_crlf():
    for chunks, wire in (([b"no newline"], b"no newline\r\n.\r\n"), ([b"a\r\n"], b"a\r\n.\r\n"),
                         ([], b".\r\n"), ([b"ends in CR\r"], b"ends in CR\r\n.\r\n"),
                         ([b"ends in LF\n"], b"ends in LF\r\n.\r\n"), ([b"."], b"..\r\n.\r\n"),
                         ([b"", b"x", b""], b"x\r\n.\r\n")):
        c = in_body()
        out = b""
        for ch in chunks:
            out += c.body(ch)
        assert out + c.body_end() == wire, (chunks, out)
        assert c.timeout_ms() == 600000                 # awaiting the final reply


def test_final_dot_written_with_the_last_chunk():
    c = in_body()
    assert c.body(bytearray(b"last line")) + c.body_end() == b"last line\r\n.\r\n"
    assert feed(c, b"250 2.0.0 queued\r\n") == [("done", 250, b"2.0.0 queued"), ("ready",)]


def test_body_abort_closes_without_the_dot():
    c = in_body()
    c.body(b"part")
    c.body_abort()
    assert drain(c) == error(b"DATA", 451, clientproto.T_ABORTED)
    raises(ClientError, c.body, b"more")
    raises(ClientError, c.body_end)


def test_body_against_the_tinymta_server_session():
    """Client and server sans-IO machines joined: the server sees the normalised body once."""
    s = Session(Policy(hostname="mx.test"))
    c = Client(HELO)
    to_client = s.greeting()
    got = []
    body = b"Subject: x\r\n\r\n.\r\n..two\nbare LF\rbare CR\r\n.\r\nMAIL FROM:<evil@x>\r\nend"
    for _ in range(40):
        if to_client:                                   # b"" would mean the server closed
            c.receive(to_client)
        to_client = b""
        to_server = b""
        for ev in drain(c):
            if ev[0] == "send":
                to_server += ev[1]
            elif ev[0] == "ready":
                if got:
                    c.quit()
                else:
                    c.send_message(A, [R1, R2], size=len(body))
            elif ev[0] == "body":
                for i in range(0, len(body), 7):
                    to_server += c.body(body[i:i + 7])
                to_server += c.body_end()
            elif ev[0] == "done":
                got.append(ev)
        s.receive(to_server)
        while True:
            ev = s.next_event()
            if ev is None:
                break
            if ev[0] == "reply":
                to_client += ev[1]
            elif ev[0] == "mail":
                s.accept_mail()
            elif ev[0] == "rcpt":
                s.accept_rcpt()
            elif ev[0] == "data_start":
                received = b""
            elif ev[0] == "body":
                received += ev[1]
            elif ev[0] == "data_end":
                s.message_accepted("Q1")
        if c.state == CLOSED:
            break
    assert got == [("done", 250, b"2.0.0 Ok: queued as Q1")]
    assert received == (b"Subject: x\r\n\r\n.\r\n..two\r\nbare LF\r\nbare CR\r\n.\r\n"
                        b"MAIL FROM:<evil@x>\r\nend\r\n")


# ---- STARTTLS (XC1, RFC 3207) -------------------------------------------------------------------
def test_XC1_opportunistic_starttls_then_ehlo_again():
    c = Client(HELO, "opportunistic")
    feed(c, GREET)
    assert feed(c, EHLO_TLS) == [("send", b"STARTTLS\r\n")]
    assert c.timeout_ms() == 300000
    evs = feed(c, b"220 2.0.0 go ahead\r\n250 injected\r\n")      # pipelined plaintext: dropped
    assert evs == [("starttls",)]
    assert feed(c, b"250 more injection\r\n") == []
    c.tls_started()
    assert c.tls_active and c.extensions == {}
    assert drain(c) == [("send", EHLO_SENT)]
    assert feed(c, b"250-mx.test\r\n250 PIPELINING\r\n") == [("ready",)]


def test_opportunistic_without_starttls_goes_plain():
    c = connected(EHLO_PIPE, tls="opportunistic")
    assert not c.tls_active


def test_opportunistic_refused_starttls_goes_plain():
    c = Client(HELO, "opportunistic")
    feed(c, GREET)
    feed(c, EHLO_TLS)
    assert feed(c, b"454 4.7.0 TLS not available\r\n") == [("ready",)]
    assert not c.tls_active and c.pipelining


def test_required_starttls_not_offered_or_refused():
    c = Client(HELO, "starttls")
    feed(c, GREET)
    assert feed(c, EHLO_PIPE) == error(b"TLS", 451, clientproto.T_NO_STARTTLS, True, quit=True)
    c = Client(HELO, "starttls")
    feed(c, GREET)
    feed(c, EHLO_TLS)
    assert feed(c, b"454 4.7.0 TLS not available\r\n") == error(b"TLS", 454, b"4.7.0 TLS not available",
                                                                True, quit=True)


def test_tls_handshake_failure():
    c = Client(HELO, "starttls")
    feed(c, GREET)
    feed(c, EHLO_TLS)
    assert feed(c, b"220 go\r\n") == [("starttls",)]
    c.tls_failed("certificate verify failed")
    assert drain(c) == error(b"TLS", 451, b"4.7.5 TLS handshake failed: certificate verify failed")


def test_tls_none_never_starts_tls():
    c = connected(EHLO_TLS, tls="none")
    assert not c.tls_active


# ---- AUTH (XC2, RFC 4954) -----------------------------------------------------------------------
def test_implicit_tls_auth_plain_initial_response():
    c = Client(HELO, "implicit", (USER, PASSWORD))
    assert c.tls_active
    feed(c, GREET)
    assert feed(c, EHLO_AUTH) == [("send", PLAIN_IR)]
    assert feed(c, b"235 2.7.0 Authentication successful\r\n") == [("ready",)]
    assert c.authenticated


def test_auth_after_starttls():
    c = Client(HELO, "starttls", (USER, PASSWORD))
    feed(c, GREET)
    assert feed(c, b"250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n") == [("send", b"STARTTLS\r\n")]
    feed(c, b"220 go\r\n")
    c.tls_started()
    assert drain(c) == [("send", EHLO_SENT)]
    assert feed(c, EHLO_AUTH) == [("send", PLAIN_IR)]
    assert feed(c, b"235 ok\r\n") == [("ready",)]


def test_auth_login_fallback():
    c = Client(HELO, "implicit", (USER, PASSWORD))
    feed(c, GREET)
    assert feed(c, b"250-mx\r\n250 AUTH=LOGIN\r\n") == [("send", b"AUTH LOGIN\r\n")]
    assert feed(c, b"334 VXNlcm5hbWU6\r\n") == [("send", b"YWxpY2U=\r\n")]
    assert feed(c, b"334 UGFzc3dvcmQ6\r\n") == [("send", b"c2VjcmV0\r\n")]
    assert feed(c, b"235 2.7.0 ok\r\n") == [("ready",)]


def test_auth_plain_long_credentials_without_initial_response():
    c = Client(HELO, "implicit", (USER, b"p" * 400))
    feed(c, GREET)
    assert feed(c, EHLO_AUTH) == [("send", b"AUTH PLAIN\r\n")]
    evs = feed(c, b"334 \r\n")
    assert len(evs) == 1 and evs[0][1] == clientproto.b64(b"\0alice\0" + b"p" * 400) + b"\r\n"
    assert feed(c, b"235 ok\r\n") == [("ready",)]


def test_XC2_credentials_never_sent_in_clear():
    for tls in ("none", "opportunistic"):
        c = Client(HELO, tls, (USER, PASSWORD))
        feed(c, GREET)
        evs = feed(c, EHLO_AUTH)
        assert evs == error(b"AUTH", 451, clientproto.T_AUTH_CLEAR, True, quit=True), evs
        for ev in evs:
            assert ev[0] != "send" or b"AUTH" not in ev[1]


def test_auth_failure_is_temporary():
    c = Client(HELO, "implicit", (USER, PASSWORD))
    feed(c, GREET)
    feed(c, EHLO_AUTH)
    assert feed(c, b"535 5.7.8 Authentication credentials invalid\r\n") == error(
        b"AUTH", 535, b"5.7.8 Authentication credentials invalid", True, quit=True)


def test_auth_not_offered_or_unusable_mechanism():
    for ehlo in (EHLO_PIPE, b"250-mx\r\n250 AUTH CRAM-MD5\r\n"):
        c = Client(HELO, "implicit", (USER, PASSWORD))
        feed(c, GREET)
        assert feed(c, ehlo) == error(b"AUTH", 451, clientproto.T_NO_AUTH, True, quit=True)


def test_auth_unexpected_challenge_closes_without_quit():
    c = Client(HELO, "implicit", (USER, PASSWORD))
    feed(c, GREET)
    feed(c, EHLO_AUTH)
    evs = feed(c, b"334 more?\r\n")
    assert evs[0][:3] == ("error", b"AUTH", 451) and evs[-1] == ("closed",) and len(evs) == 2


# ---- timeouts (L7), drops (Q7), broken servers ----------------------------------------------------
def test_L7_timeout_for_each_stage():
    c = Client(HELO, timeouts={"dot": 1234})
    assert c.timeout_ms() == 300000                     # greeting
    feed(c, GREET)
    assert c.timeout_ms() == 300000                     # EHLO
    feed(c, EHLO_PLAIN)
    c.send_message(A, [R1], size=10)
    drain(c)
    assert c.timeout_ms() == 300000                     # MAIL
    feed(c, b"250 ok\r\n")
    assert c.timeout_ms() == 300000                     # RCPT
    feed(c, b"250 ok\r\n")
    assert c.timeout_ms() == 120000                     # DATA initiation
    feed(c, b"354 go\r\n")
    assert c.timeout_ms() == 180000                     # each data block
    c.body_end()
    assert c.timeout_ms() == 1234                       # DATA termination (overridden)
    feed(c, b"250 ok\r\n")
    c.quit()
    drain(c)
    feed(c, b"221 bye\r\n")
    assert c.timeout_ms() == 0


def test_progress_moves_with_each_reply_and_write():
    c = connected()
    c.send_message(A, [R1], size=10)
    drain(c)
    seen = [c.progress]
    for line in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        feed(c, line)
        seen.append(c.progress)
    c.body(b"x")
    seen.append(c.progress)
    for i in range(1, len(seen)):
        assert seen[i] > seen[i - 1], seen


def test_timed_out_at_each_stage_is_temporary():
    c = Client(HELO)
    c.timed_out()
    assert drain(c) == error(b"GREETING", 451, b"4.4.1 No greeting from the server")
    c.timed_out()                                       # closed: nothing more
    assert drain(c) == []
    c = connected()
    c.send_message(A, [R1], size=10)
    drain(c)
    feed(c, b"250 ok\r\n")
    c.timed_out()
    assert drain(c) == error(b"RCPT", 451, b"4.4.2 Timeout waiting for RCPT")
    c = in_body()
    c.timed_out()
    assert drain(c) == error(b"DATA", 451, clientproto.T_BODY_TIMEOUT)
    c = in_body()
    c.body_end()
    c.timed_out()
    assert drain(c) == error(b"DATA", 451, b"4.4.2 Timeout waiting for end of data")


def test_Q7_connection_closed_is_a_temporary_error():
    c = connected()
    c.send_message(A, [R1, R2], size=10)
    drain(c)
    c.receive(b"250 ok\r\n250 ok\r\n")
    assert feed(c, b"") == [("rcpt", 0, 250, b"ok"), ("error", b"RCPT", 451, clientproto.T_LOST, True),
                            ("closed",)]
    c.receive(b"250 late\r\n")
    assert drain(c) == []


def test_reply_during_data_before_close_keeps_its_code():
    c = in_body()
    c.receive(b"552 5.3.4 too big\r\n")
    assert c.next_event() is None                       # not read while the body is written
    assert feed(c, b"") == error(b"DATA", 552, b"5.3.4 too big", False)
    c = in_body()
    assert feed(c, b"") == error(b"DATA", 451, clientproto.T_LOST)


def test_421_at_any_point_closes_without_quit():
    c = connected()
    c.send_message(A, [R1, R2], size=10)
    drain(c)
    assert feed(c, b"250 ok\r\n421 4.7.0 too many errors\r\n") == error(b"RCPT", 421, b"4.7.0 too many errors")


def test_garbled_and_overlong_replies():
    for junk in (b"hello\r\n", b"25 x\r\n", b"250x\r\n", b"650 what\r\n", b"x" * 3000):
        c = Client(HELO)
        assert feed(c, junk) == error(b"GREETING", 451, clientproto.T_GARBLED), junk
    c = in_body()
    c.body_end()
    assert feed(c, b"354 again?\r\n")[0][:3] == ("error", b"DATA", 451)


def test_multiline_reply_codes_and_text():
    c = connected()
    c.send_message(A, [R1], size=10)
    drain(c)
    evs = feed(c, b"250 ok\r\n550-5.7.1 blocked\r\n550-5.7.1 see\thttp://x\r\n551 5.7.1 \x00end\r\n554 no\r\n")
    assert evs[0] == ("rcpt", 0, 551, b"5.7.1 blocked see http://x  end")


def test_2xx_to_data_is_not_a_delivery():
    c = connected()
    c.send_message(A, [R1], size=10)
    drain(c)
    evs = feed(c, b"250 ok\r\n250 ok\r\n250 sure\r\n")
    assert evs[0] == ("rcpt", 0, 250, b"ok") and evs[1][:3] == ("error", b"DATA", 451)
    assert [e for e in evs if e[0] == "done"] == []


def test_unsolicited_reply_while_idle():
    c = connected()
    assert feed(c, b"421 4.4.2 idle timeout\r\n") == error(b"MAIL", 421, b"4.4.2 idle timeout")


def test_rset_refused_closes():
    c = connected()
    c.send_message(A, [R1], size=10)
    drain(c)
    feed(c, b"250 ok\r\n550 no\r\n554 no rcpt\r\n")
    c.send_message(A, [R1], size=10)
    drain(c)
    assert feed(c, b"500 5.5.1 what\r\n")[:2] == [("error", b"MAIL", 500, b"5.5.1 what", True), ("closed",)]


def test_quit():
    c = connected()
    c.quit()
    assert drain(c) == [("send", b"QUIT\r\n")]
    assert feed(c, b"221 2.0.0 Bye\r\n") == [("closed",)]
    c = connected()
    c.quit()
    drain(c)
    assert feed(c, b"") == error(b"QUIT", 451, clientproto.T_LOST)


def test_connect_failed():
    c = Client(HELO)
    c.connect_failed(OSError(111))
    evs = drain(c)
    assert evs[0][:3] == ("error", b"CONNECT", 451) and evs[0][3].startswith(b"4.4.1 ") and evs[1] == ("closed",)
    c = connected()
    raises(ClientError, c.connect_failed, "late")


def test_calls_out_of_turn_raise():
    c = Client(HELO)
    raises(ClientError, c.send_message, A, [R1])
    raises(ClientError, c.quit)
    raises(ClientError, c.body, b"x")
    raises(ClientError, c.tls_started)
    c = connected()
    raises(ClientError, c.body_end)
    raises(ClientError, c.body_abort)
    c.send_message(A, [R1], size=1)
    raises(ClientError, c.send_message, A, [R1])


def test_bad_addresses_raise():
    c = connected()
    raises(ValueError, c.send_message, b"a@b\r\nRCPT TO:<x@y>", [R1])
    raises(ValueError, c.send_message, A, [b"b>@x"])
    raises(ValueError, c.send_message, A, [])
    c.send_message(b"", [R1], size=1)                  # the null sender of a bounce
    assert drain(c) == [("send", b"MAIL FROM:<> SIZE=1\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")]


def test_server_flooding_during_the_body_is_bounded():
    c = in_body()
    for _ in range(40):
        c.receive(b"x" * 1000)                          # never parsed, never kept past the bound
    assert len(c._buf) <= clientproto.BODY_BUF_MAX
    assert drain(c) == error(b"DATA", 451, clientproto.T_BODY_DATA)


def test_internal_fault_becomes_an_error_event():
    c = connected()
    c.send_message(A, [R1], size=1)
    drain(c)
    c._reader = None                                    # provoke a fault inside next_event()
    c.receive(b"250 ok\r\n")
    ev = c.next_event()
    assert ev == ("error", b"MAIL", 451, b"4.3.0 Internal error in the SMTP client", True)
    assert c.next_event() == ("closed",) and c.next_event() is None
    assert c.last_error is not None


def test_timed_out_while_idle_or_in_the_tls_handshake():
    c = connected()
    c.timed_out()
    assert drain(c) == error(b"MAIL", 451, b"4.4.2 Timeout waiting for the next command")
    c = Client(HELO, "starttls")
    feed(c, GREET)
    feed(c, EHLO_TLS)
    feed(c, b"220 go\r\n")
    c.timed_out()
    assert drain(c) == error(b"TLS", 451, clientproto.T_TLS_TIMEOUT)


def test_3xx_out_of_place_closes():
    for replies, stage in ((b"354 what\r\n", b"MAIL"), (b"250 ok\r\n354 what\r\n", b"RCPT")):
        c = connected()
        c.send_message(A, [R1], size=1)
        drain(c)
        evs = feed(c, replies)
        assert evs[-2][:3] == ("error", stage, 451) and evs[-2][3].startswith(clientproto.T_UNEXPECTED)
        assert evs[-1] == ("closed",) and ("send", b"QUIT\r\n") not in evs


def test_ehlo_capabilities_parsing():
    ext = clientproto.parse_ehlo([b"mx.test hi", b"AUTH LOGIN", b"AUTH=PLAIN", b"size 99", b"8bitmime",
                                  b"X-UNKNOWN a b"])
    assert clientproto.auth_mechs(ext) == [b"LOGIN", b"PLAIN"]
    assert clientproto.size_limit(ext) == 99 and b"8BITMIME" in ext and ext[b"X-UNKNOWN"] == b"a b"
    assert clientproto.size_limit({b"SIZE": b"huge"}) == 0


def test_receive_takes_bytearray_and_memoryview():
    c = Client(HELO)
    c.receive(bytearray(b"220 mx"))
    c.receive(memoryview(b" ESMTP\r\n"))
    c.receive(None)                                     # a MicroPython TLS socket with nothing yet
    assert drain(c) == [("send", EHLO_SENT)]
