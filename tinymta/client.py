"""Sans-IO SMTP client (RFC 5321 client role, the relay side): server bytes in, events out.

The mirror image of session.py: one outbound connection's SMTP state (greeting, EHLO with HELO
fallback, STARTTLS, AUTH, transactions with or without PIPELINING, the body, the RFC 5321
§4.5.3.2 timeout due now).  It knows no sockets, clocks, files, spool, DNS or retry policy.
Reply framing, body encoding (protocol.md SM5), SASL responses, texts: clientproto.

    c = Client(helo, tls="none", auth=None, tls_active=False, timeouts=None)
      helo        bytes (or str), sent in EHLO/HELO
      tls         "none" | "opportunistic" (STARTTLS if offered, else plain; refused: plain) |
                  "starttls" (required: not offered/refused -> error TLS) | "implicit" (the caller
                  connected with TLS: tls_active is True, no STARTTLS)
      auth        None | (user, password) bytes: AUTH PLAIN with initial response preferred, LOGIN
                  fallback; only with TLS active, never in clear (else error AUTH, temporary)
      timeouts    dict over clientproto.TIMEOUTS, ms: greeting 300000, mail 300000, rcpt 300000,
                  data 120000 (awaiting 354), block 180000 (each body write), dot 600000 (awaiting
                  the final reply), command 300000 (EHLO STARTTLS AUTH RSET QUIT, TLS, idle)
    c.receive(data)        bytes from the server, buffered (nothing parsed); b"" = the server
                           closed; None is ignored
    c.next_event() -> tuple | None     None: more bytes or a caller call are needed
    c.timeout_ms() -> int  timeout for what is awaited now (0 once closed): re-arm the clock
                           whenever c.progress changed (a reply consumed, bytes produced)
    c.timed_out()          the clock expired: error (temporary), closed
    c.connect_failed(r)    before the greeting: error CONNECT (temporary), closed
    c.tls_started()        after ("starttls",): the socket is TLS now; the client sends EHLO
    c.tls_failed(r)        the handshake failed: error TLS (temporary), closed
    c.send_message(sender, rcpts, size=None, eight_bit=False)   after ("ready",); addresses are
                           bytes without <>; size (octets) is checked against SIZE and sent as
                           SIZE= when offered; eight_bit adds BODY=8BITMIME
    c.body(chunk) -> bytes after ("body",): raw message bytes in, wire bytes out, to be written
                           as they are (no event); chunks may split lines, even CRLF, anywhere
    c.body_end() -> bytes  closing bytes (CRLF if the content lacked a final one, then ".\r\n"):
                           call it once the spool's CRCs matched and write body(last)+body_end()
                           in one go; the final reply is then awaited
    c.body_abort()         instead of body_end: error DATA (temporary), closed: close the socket
                           without the final dot, and the server discards the transaction
    c.quit()               after ("ready",): QUIT; ("closed",) on the reply
Events, handled in order:
    ("send", wire)               write these bytes.  With PIPELINING [RSET] MAIL, RCPTs and DATA
                                 are one write (RFC 2920 §3.1), else one command per reply
    ("starttls",)                wrap the socket (TLS client, SNI), then c.tls_started()
    ("ready",)                   idle: c.send_message(...) or c.quit()
    ("rcpt", index, code, text)  reply to RCPT number index (code int, text bytes)
    ("body",)                    354 and a recipient accepted: c.body(...)..., c.body_end()
    ("done", code, text)         the result for recipients that got a 2xx rcpt event: the reply
                                 to the final dot, or why the transaction failed before it: MAIL
                                 refused (no rcpt events then: it holds for all), every RCPT
                                 refused (the last refusal), DATA refused, or local and nothing
                                 sent: 552 5.3.4 over the server's SIZE, 554 5.6.3 8-bit to a
                                 server without 8BITMIME.  ("ready",) follows (RSET goes before
                                 the next MAIL when a transaction was left open)
    ("error", stage, code, text, temporary)   the connection is unusable; ("closed",) follows.
                                 stage: b"CONNECT" "GREETING" "EHLO" "TLS" "AUTH" "MAIL" (RSET,
                                 idle too) "RCPT" "DATA" "QUIT".  code: the server's, or 451 when
                                 the client saw it, the text then starting with an enhanced code
                                 (timeout or end of stream 4.4.x, garbled reply 4.5.0, TLS
                                 4.7.x).  temporary: True (requeue or next MX) but for 5xx to
                                 both EHLO and HELO, and for a 5xx sent during DATA before the
                                 server closed.  A 5xx greeting is temporary (RFC 5321 §3.1: no
                                 service on this host; the next MX may take it), an AUTH failure
                                 too (no bounce storm).  After done (e.g. at QUIT) it concerns
                                 no message.  When the dialogue is in step (a refusal, or a
                                 local decision) ("send", b"QUIT\r\n") comes first: write it,
                                 do not wait for the reply
    ("closed",)                  after the reply to QUIT or an error: close the socket
Replies may be split at any byte; a multi-line reply is one event (clientproto.reply_text).
Calls out of turn raise ClientError; addresses with control characters or <> raise ValueError.
No input makes receive()/next_event() raise: an internal fault is an error event, kept in
c.last_error.  Input after the 220 to STARTTLS is dropped and the capabilities are forgotten
(RFC 3207 §4.2).  Not done here: certificate checks (the caller's TLS context verifies, XC2),
AUTH=<> (Postfix's smtp_send_dummy_mail_auth default), body line length and 8-bit checks (the
intake's), retrying 452-refused recipients (the queue's, L5).  Readable: c.state (WAIT READY
W_TLS BODY CLOSED), c.extensions (KEYWORD -> params), c.esmtp, c.pipelining, c.tls_active,
c.authenticated, c.progress.
"""
from tinymta import clientproto as P
from tinymta.clientproto import (AWAIT, BODY, CLOSED, QUIT, READY, TLS_MODES, W_TLS,
                                 WAIT, ClientError, Connection)

# Theory of operation (cf. session.py).  WAIT awaits replies listed in self._expect, each
# (kind, arg); AWAIT maps a kind to its error stage, timeout, handler and name.  PIPELINING
# expects a transaction's replies at once; without it _plan holds the commands not sent yet.
# A 421 to anything but QUIT closes.  Nothing left to expect after a reply: READY, ("ready",).
#
#   awaiting     reply or call                         -> next            output
#   greeting     2xx | other                           -> ehlo | CLOSED   send EHLO | QUIT, error
#   ehlo         2xx | 5xx | other                     -> (hello) | helo | CLOSED
#   helo         2xx | other                           -> (hello) | CLOSED   no extensions
#   (hello)      TLS wanted, offered | required        -> starttls | CLOSED  send STARTTLS | error
#   (hello)      auth set: TLS, PLAIN/LOGIN | else     -> auth | CLOSED   send AUTH | error AUTH
#   (hello)      otherwise                             -> READY           ("ready",)
#   starttls     2xx | other ("starttls": CLOSED)      -> W-TLS | (hello) ("starttls",) | plain
#   W-TLS        tls_started() | tls_failed(r)         -> ehlo | CLOSED   send EHLO | error TLS
#   auth         334 with a response left | 2xx        -> auth | READY    send response
#   READY        send_message(): over SIZE, 8-bit      -> READY           ("done", 552|554), ready
#   READY        send_message()                        -> [rset] mail     send (PIPELINING: all)
#   mail         2xx | 4xx/5xx                         -> rcpt            - | done, rest drained
#   rcpt i       2xx/4xx/5xx                           -> rcpt i+1 | data ("rcpt", i, ...), none: done
#   data         3xx | 3xx after done | 4xx/5xx        -> BODY | void | READY  body | "." | done
#   BODY         body(c) -> bytes; body_end() -> bytes -> dot   (body_abort(): CLOSED, error)
#   dot | void   2xx/4xx/5xx | any                     -> READY           ("done", ...) | -
#   READY        quit()                                -> quit            send QUIT
#   quit         any                                   -> CLOSED          ("closed",)
#   any          421, garbled, out of place, EOF, timed_out()  -> CLOSED  error <stage>


class Client(Connection):
    def __init__(self, helo, tls="none", auth=None, tls_active=False, timeouts=None):
        if tls not in TLS_MODES:
            raise ValueError("tls must be one of %s" % (TLS_MODES,))
        self.helo = P.to_bytes(helo)
        if not self.helo or P.clean(self.helo) != self.helo or b" " in self.helo:
            raise ValueError("bad helo name %r" % (self.helo,))
        self.tls = tls
        self.auth = None if auth is None else (P.to_bytes(auth[0]), P.to_bytes(auth[1]))
        self.tls_active = bool(tls_active) or tls == "implicit"
        self.timeouts = dict(P.TIMEOUTS)
        for k in (timeouts or {}):
            if k not in self.timeouts:
                raise ValueError("unknown timeout %r" % (k,))
            self.timeouts[k] = int(timeouts[k])
        self.extensions = {}
        self.esmtp = self.pipelining = self.authenticated = False
        self.progress = 0
        self.last_error = None
        self.state = WAIT
        self._buf = bytearray()
        self._reader = P.ReplyReader()
        self._events = []
        self._expect = [("greeting", None)]
        self._plan = []
        self._eof = self._overflow = self._tls_refused = self._need_rset = False
        self._encoder = None
        self._new_txn(0)

    # ---- public interface -------------------------------------------------------------------
    def receive(self, data):
        if data is None or self.state == CLOSED:
            return
        if not data:
            self._eof = True
        elif self.state == W_TLS:
            return                                  # plaintext after the 220: dropped
        elif self.state == BODY and len(self._buf) + len(data) > P.BODY_BUF_MAX:
            self._overflow = True
        else:
            self._buf += data if isinstance(data, (bytes, bytearray)) else bytes(data)

    def next_event(self):
        try:
            while not self._events and self._step():
                pass
        except Exception as e:                      # no input crashes the caller's loop
            self.last_error = e
            self._events = []
            self._fail(self._stage(), 451, b"4.3.0 Internal error in the SMTP client")
        return self._events.pop(0) if self._events else None

    def timeout_ms(self):
        st = self.state
        if st == WAIT:
            return self.timeouts[AWAIT[self._expect[0][0]][1]]
        if st == BODY:
            return self.timeouts["block"]
        return 0 if st == CLOSED else self.timeouts["command"]

    def timed_out(self):
        st = self.state
        if st == CLOSED:
            return
        if st == WAIT:
            kind = self._expect[0][0]
            text = P.T_NO_GREETING if kind == "greeting" else P.T_TIMEOUT + AWAIT[kind][3]
        elif st == BODY:
            text = P.T_BODY_TIMEOUT
        elif st == W_TLS:
            text = P.T_TLS_TIMEOUT
        else:
            text = P.T_TIMEOUT + b"the next command"
        self._fail(self._stage(), 451, text)

    def connect_failed(self, reason):
        if self.state != WAIT or self._expect[0][0] != "greeting":
            raise ClientError("connect_failed after the greeting")
        self._fail(b"CONNECT", 451, P.T_CONNECT + b": " + P.clean(P.to_bytes(reason)))

    def tls_started(self):
        self._check(W_TLS, "tls_started")
        self.tls_active = True
        self._buf[:] = b""
        self._reader.reset()
        self.extensions, self.esmtp, self.pipelining = {}, False, False
        self.state = WAIT
        self._send(b"EHLO " + self.helo + P.CRLF, ("ehlo", None))

    def tls_failed(self, reason):
        if self.state != CLOSED:
            self._fail(b"TLS", 451, P.T_TLS_FAILED + P.clean(P.to_bytes(reason)))

    def send_message(self, sender, rcpts, size=None, eight_bit=False):
        self._check(READY, "send_message")
        sender = P.check_address(sender)
        rcpts = [P.check_address(r) for r in rcpts]
        if not rcpts:
            raise ValueError("no recipients")
        ext, limit = self.extensions, P.size_limit(self.extensions)
        if size is not None and limit and size > limit:
            return self._local_done(552, P.T_TOO_BIG + b" (%d > %d)" % (size, limit))
        if eight_bit and b"8BITMIME" not in ext:
            return self._local_done(554, P.T_NO_8BIT)
        plan = [(b"RSET\r\n", ("rset", None))] if self._need_rset else []
        plan.append((P.mail_command(sender, size, eight_bit, ext), ("mail", None)))
        for i in range(len(rcpts)):
            plan.append((b"RCPT TO:<" + rcpts[i] + b">\r\n", ("rcpt", i)))
        plan.append((b"DATA\r\n", ("data", None)))
        self._new_txn(len(rcpts))
        self.state = WAIT
        if self.pipelining:
            self._events.append(("send", b"".join([p[0] for p in plan])))
            self._expect.extend([p[1] for p in plan])
            self.progress += 1
        else:
            self._plan = plan
            self._next()

    def body(self, chunk):
        self._check(BODY, "body")
        self.progress += 1
        return self._encoder.feed(chunk)

    def body_end(self):
        self._check(BODY, "body_end")
        self.progress += 1
        data = self._encoder.end()
        self.state = WAIT
        self._expect.append(("dot", None))
        return data

    def body_abort(self):
        self._check(BODY, "body_abort")
        self._fail(b"DATA", 451, P.T_ABORTED)

    def quit(self):
        self._check(READY, "quit")
        self.state = WAIT
        self._send(QUIT, ("quit", None))

    # ---- plumbing ---------------------------------------------------------------------------
    def _next(self):
        """Without PIPELINING: send the next planned command, unless the transaction is over."""
        if self._reported:
            self._plan = []
        if self._plan:
            data, expect = self._plan.pop(0)
            self._send(data, expect)

    def _new_txn(self, nrcpt):
        self._nrcpt, self._accepted, self._reported = nrcpt, 0, False

    def _done(self, code, text):
        self._reported = True
        self._events.append(("done", code, text))

    def _local_done(self, code, text):
        self._events.append(("done", code, text))
        self._events.append(("ready",))

    def _step(self):
        """Consume one reply (or the end of stream); False when nothing can be done yet."""
        st = self.state
        if st == CLOSED:
            return False
        if st == W_TLS or st == BODY:
            if self._overflow:
                self._fail(b"DATA", 451, P.T_BODY_DATA)
            elif self._eof:
                self._lost()
            return self._overflow or self._eof
        r = self._reader.take(self._buf)
        if r is None:
            if self._eof:
                self._lost()
            return self._eof
        self.progress += 1
        if r == P.GARBLED:
            self._fail(self._stage(), 451, P.T_GARBLED)
            return True
        code, lines = r
        text = P.reply_text(lines)
        if st == READY:                             # nothing asked: a 421 before closing, or junk
            self._fail(b"MAIL", code, text) if code >= 400 else self._protocol(b"MAIL", text)
            return True
        kind, arg = self._expect.pop(0)
        if code == 421 and kind != "quit":          # the server is closing: no QUIT
            self._fail(AWAIT[kind][0], code, text)
            return True
        getattr(self, AWAIT[kind][2])(code, lines, text, arg)
        if self.state == WAIT and not self._expect:
            self.state = READY
            self._events.append(("ready",))
        return True

    def _lost(self):
        """End of stream: a reply the server sent during DATA before closing keeps its code."""
        if self.state == BODY:
            r = self._reader.take(self._buf)
            if r is not None and r != P.GARBLED and r[0] >= 400:
                return self._fail(b"DATA", r[0], P.reply_text(r[1]), r[0] < 500)
        self._fail(self._stage(), 451, P.T_LOST)

    # ---- reply handlers: (code, lines, text, arg) ---------------------------------------------
    def _on_rset(self, code, lines, text, arg):
        if code // 100 != 2:
            return self._fail(b"MAIL", code, text) if code >= 400 else self._protocol(b"MAIL", text)
        self._need_rset = False
        self._next()

    def _on_mail(self, code, lines, text, arg):
        if code // 100 == 3:
            return self._protocol(b"MAIL", text)
        if code // 100 == 2:
            self._need_rset = True
        else:
            self._done(code, text)
        self._next()

    def _on_rcpt(self, code, lines, text, index):
        if code // 100 == 3:
            return self._protocol(b"RCPT", text)
        if not self._reported:
            self._events.append(("rcpt", index, code, text))
            if code // 100 == 2:
                self._accepted += 1
            elif index == self._nrcpt - 1 and not self._accepted:
                self._done(code, text)              # every recipient refused
        self._next()

    def _on_data(self, code, lines, text, arg):
        if code // 100 == 3:
            if self._reported:                      # 354 with nothing to deliver: empty message
                return self._send(b".\r\n", ("void", None))
            self.state = BODY
            self._encoder = P.BodyEncoder()
            return self._events.append(("body",))
        if code // 100 == 2:
            return self._protocol(b"DATA", text)    # never 2xx without 354 (RFC 5321 §3.3)
        if not self._reported:
            self._done(code, text)

    def _on_dot(self, code, lines, text, arg):
        if code // 100 == 3:
            return self._protocol(b"DATA", text)
        self._need_rset = False
        self._done(code, text)

    def _on_void(self, code, lines, text, arg):
        pass

    def _on_quit(self, code, lines, text, arg):
        self._events.append(("closed",))
        self._close()
