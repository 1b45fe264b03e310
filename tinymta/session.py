"""Sans-IO SMTP server session: client bytes in, replies and events out (RFC 5321 server role).

It holds one connection's SMTP state: the command/state table, the envelope, the STARTTLS reset,
and it drives command framing (smtpdata.take_line: CRLF only, 512-octet lines), the AUTH PLAIN/
LOGIN exchange (smtpproto.SaslExchange) and the DATA reader (smtpdata.DataReader).  It must not
know sockets, clocks, files, the spool, DNS, relay rules, passwords, logging or threads: each
decision needing them is a *verdict event*, and no further input is parsed until the verdict
arrives, so pipelined replies stay in order.

    s = Session(policy)                 a Policy, or any object with its attributes
    s.greeting([refuse_reply]) -> bytes the 220 banner; with e.g. b"554 5.7.1 No service", every
                                        command but QUIT then gets 503 (RFC 5321 §3.1)
    s.receive(data)                     buffer bytes read from the client (parses nothing)
    s.next_event() -> tuple | None      None: more bytes needed, or a verdict is pending (s.pending)
    s.pending                           None or "mail" "rcpt" "data" "auth" "tls"
    s.wants_data() -> bool              False: stop reading (buffer full, awaiting TLS, closed)
    s.timeout_reply(), s.shutdown_reply() -> bytes   421 4.4.2 / 421 4.3.2; the session closes

Events, handled in order:
    ("reply", wire)                   write these CRLF-terminated bytes to the client
    ("mail", sender, params)          verdict: s.accept_mail() | s.reject_mail(reply)
    ("rcpt", address, params)         verdict: s.accept_rcpt() | s.reject_rcpt(reply)
    ("data_start", sender, rcpts)     after the 354: a body follows; the final envelope
    ("body", chunk)                   unstuffed CRLF-line bytes, 4096 octets each but the last
    ("data_abort",)                   the message will be refused (size, bare CR/LF, long line,
                                      hops): drop it; the session reads to the real end, replies
    ("data_end",)                     verdict: s.message_accepted(queue_id) once durable (250)
                                      | s.message_failed(reply)
    ("auth", mech, user, password)    verdict: s.auth_result(ok[, reply])
    ("starttls",)                     flush replies, wrap the socket, then s.tls_started()
    ("close",)                        flush replies, close (after 221, 421 or 554 5.5.0)
Addresses are bytes (b"" for <>, source route stripped); params a list of (KEY, value|None).
A bare <postmaster> is accepted by the session itself (RFC 5321 §4.5.1): no "rcpt" event, it
is in s.rcpt_to and data_start.  A verdict method called out of turn raises SessionError and
caller replies are checked (one line, 4xx/5xx).  No input makes receive()/next_event() raise:
an internal fault becomes 421 4.3.0 + close and is kept in s.last_error.  Readable state:
s.helo_name, s.esmtp, s.tls_active, s.auth_user, s.mail_from, s.mail_params, s.rcpt_to,
s.protocol() (Received "with"), s.data (the DataReader: size, received, header_bytes).
"""
from tinymta import smtpproto as P
from tinymta.smtpdata import BARE, CHUNK, TOO_LONG, DataReader, take_line

# Theory of operation (cf. h11 _state.py).  One state at a time.  _VERBS maps a verb to (handler
# or fixed reply, states allowing it, 503 text elsewhere).  W-* states await a caller verdict and
# parse nothing; BODY feeds the DataReader; AUTH-* read SASL response lines.
#
#   state       input / verdict                          -> state         output
#   INIT        EHLO|HELO name                            -> READY         250
#   INIT        NOOP RSET VRFY HELP EXPN                  -> INIT          250 250 252 214 502
#   READY       MAIL FROM:<path> (syntax ok)              -> W-MAIL        ("mail", ...)
#   W-MAIL      accept_mail() | reject_mail(r)            -> MAIL | READY  250 2.1.0 | r
#   MAIL|RCPT   RCPT TO:<path> (syntax ok, under limit)   -> W-RCPT        ("rcpt", ...)
#   W-RCPT      accept_rcpt() | reject_rcpt(r)            -> RCPT | same   250 2.1.5 | r
#   MAIL        DATA                                      -> MAIL          554 no valid recipients
#   RCPT        DATA                                      -> BODY          354, ("data_start", ...)
#   BODY        content lines                             -> BODY          ("body"...), ("data_abort",)
#   BODY        CRLF.CRLF, message refused                -> READY         552 | 550 | 554
#   BODY        CRLF.CRLF                                 -> W-DATA        ("data_end",)
#   W-DATA      message_accepted(id) | message_failed(r)  -> READY         250 2.0.0 | r
#   READY       AUTH PLAIN|LOGIN [resp]                   -> AUTH-* | W-AUTH   334 | ("auth", ...)
#   AUTH-*      response line ("*" cancels: 501)          -> AUTH-* | W-AUTH | READY
#   W-AUTH      auth_result(ok)                           -> READY         235 | 535
#   INIT|READY  STARTTLS                                  -> W-TLS         220, ("starttls",)
#   W-TLS       tls_started() (input until then dropped)  -> INIT          helo/txn/auth forgotten
#   command     EHLO|HELO -> READY, RSET -> READY (INIT stays INIT): the transaction is discarded
#   command     QUIT                                      -> CLOSED        221, ("close",)
#   REFUSED     anything but QUIT                         -> REFUSED       503
INIT, READY, MAIL, RCPT, BODY = 1, 2, 4, 8, 16
W_MAIL, W_RCPT, W_DATA, W_AUTH, W_TLS = 32, 64, 128, 256, 512
AUTH_PLAIN, AUTH_USER, AUTH_PASS, REFUSED, CLOSED = 1024, 2048, 4096, 8192, 16384
STATE_NAMES = dict((1 << i, n) for i, n in enumerate(("INIT READY MAIL RCPT BODY W-MAIL W-RCPT W-DATA"
                                                     " W-AUTH W-TLS AUTH-PLAIN AUTH-USER AUTH-PASS"
                                                     " REFUSED CLOSED").split()))
_CMD = INIT | READY | MAIL | RCPT
_AUTH = AUTH_PLAIN | AUTH_USER | AUTH_PASS
_SASL_STEP = {b"PLAIN": AUTH_PLAIN, b"USER": AUTH_USER, b"PASS": AUTH_PASS}
_PENDING = {W_MAIL: "mail", W_RCPT: "rcpt", W_DATA: "data", W_AUTH: "auth", W_TLS: "tls"}
_VERBS = {b"EHLO": ("_hello", _CMD, None), b"HELO": ("_hello", _CMD, None),
          b"MAIL": ("_mail", READY, P.R_NESTED), b"RCPT": ("_rcpt", MAIL | RCPT, P.R_NEED_MAIL),
          b"DATA": ("_data", MAIL | RCPT, P.R_NEED_MAIL), b"RSET": ("_rset", _CMD, None),
          b"NOOP": (P.R_OK, _CMD, None), b"QUIT": ("_quit", _CMD | REFUSED, None),
          b"VRFY": ("_vrfy", _CMD, None), b"HELP": (P.R_HELP, _CMD, None),
          b"STARTTLS": ("_starttls", INIT | READY, P.R_IN_TXN), b"AUTH": ("_auth", READY, P.R_IN_TXN)}
for _v in (b"EXPN", b"TURN", b"ETRN", b"ATRN", b"BDAT", b"SEND", b"SOML", b"SAML"):
    _VERBS[_v] = (P.R_NOT_IMPL, _CMD, None)      # recognised, not offered: 502 (G18, G21, X10)
_BUF_HIGH = 16384    # wants_data() is False beyond this: more than any legal line


class SessionError(Exception):
    """A verdict method was called while that verdict was not pending (a caller bug)."""


class Policy:
    """What the session needs from the configuration; any object with these attributes works."""

    def __init__(self, hostname="localhost", max_message_size=1048576, max_recipients=100,
                 bare_newlines="reject", tls_available=False, auth_available=False,
                 auth_without_tls=False, max_received=100, strict_pipelining=False, max_errors=20):
        self.hostname = hostname                  # str or bytes: banner, EHLO
        self.max_message_size = max_message_size  # SIZE; 552 5.3.4 beyond; 0 = no limit
        self.max_recipients = max_recipients      # per transaction; 452 4.5.3 beyond
        self.bare_newlines = bare_newlines        # "reject" | "normalize" (message content only)
        self.tls_available = tls_available        # offer STARTTLS
        self.auth_available = auth_available      # offer AUTH PLAIN LOGIN under TLS...
        self.auth_without_tls = auth_without_tls  # ...or in clear too
        self.max_received = max_received          # more Received: fields -> 554 5.4.6
        self.strict_pipelining = strict_pipelining  # input pipelined after EHLO/HELO/DATA -> 554 5.5.0
        self.max_errors = max_errors              # 5xx replies before 421 + close; 0 = no limit


class Session:
    def __init__(self, policy):
        self.policy = policy
        h = policy.hostname
        self.hostname = h.encode() if isinstance(h, str) else bytes(h)
        self.state = INIT
        self._buf = bytearray()
        self._pos = 0               # read offset into _buf while in BODY (0 elsewhere)
        self._events = []
        self._discard = False       # dropping the rest of an over-long command line
        self._errors = 0
        self._sasl = self.data = self.last_error = self.helo_name = self.auth_user = None
        self.esmtp = self.tls_active = False
        self._reset()

    # ---- public interface -------------------------------------------------------------------
    def greeting(self, refuse_reply=None):
        if refuse_reply is None:
            return P.reply(b"220 " + self.hostname + b" ESMTP tinymta")
        self.state = REFUSED
        return P.reply(P.check_reply(refuse_reply, b"45"))

    def receive(self, data):
        if not self.state & (W_TLS | CLOSED):      # after STARTTLS: plaintext injection, dropped
            self._buf += data if isinstance(data, (bytes, bytearray)) else bytes(data)

    def next_event(self):
        try:
            while not self._events and self._step():
                pass
        except Exception as e:                      # invariant 7: no input crashes the loop
            self.last_error = e
            self._events = [("reply", P.reply(P.R_INTERNAL)), ("close",)]
            self._close()
        return self._events.pop(0) if self._events else None

    @property
    def pending(self):
        return _PENDING.get(self.state)

    def wants_data(self):
        return not self.state & (W_TLS | CLOSED) and len(self._buf) - self._pos < _BUF_HIGH

    def protocol(self):
        """RFC 3848 "with" value for the Received line: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
        if not self.esmtp:
            return b"SMTP"
        return b"ESMTP" + (b"S" if self.tls_active else b"") + (b"A" if self.auth_user else b"")

    def timeout_reply(self):
        self._close()
        return P.reply(P.R_TIMEOUT)

    def shutdown_reply(self):
        self._close()
        return P.reply(P.R_SHUTDOWN)

    def accept_mail(self):
        self._expect(W_MAIL)
        self.mail_from, self.mail_params = self._pending
        self._ok(P.R_MAIL_OK, MAIL)

    def reject_mail(self, reply):
        self._expect(W_MAIL)
        self._ok(P.check_reply(reply, b"45"), READY)

    def accept_rcpt(self):
        self._expect(W_RCPT)
        self.rcpt_to.append(self._pending[0])
        self._ok(P.R_RCPT_OK, RCPT)

    def reject_rcpt(self, reply):
        self._expect(W_RCPT)
        self._ok(P.check_reply(reply, b"45"), RCPT if self.rcpt_to else MAIL)

    def message_accepted(self, queue_id):
        self._expect(W_DATA)
        qid = queue_id.encode() if isinstance(queue_id, str) else bytes(queue_id)
        self._ok(P.check_reply(P.R_QUEUED + qid, b"2"), READY)
        self._reset()

    def message_failed(self, reply):
        self._expect(W_DATA)
        self._ok(P.check_reply(reply, b"45"), READY)
        self._reset()

    def auth_result(self, ok, reply=None):
        self._expect(W_AUTH)
        if reply is None:
            reply = P.R_AUTH_OK if ok else P.R_AUTH_FAIL
        self._ok(P.check_reply(reply, b"2" if ok else b"45"), READY)
        if ok:
            self.auth_user = self._sasl.user
        self._sasl = None

    def tls_started(self):
        self._expect(W_TLS)
        self._buf[:] = b""
        self.tls_active, self.helo_name, self.esmtp, self.auth_user = True, None, False, None
        self._reset()
        self.state = INIT

    # ---- plumbing ---------------------------------------------------------------------------
    def _expect(self, state):
        if self.state != state:
            raise SessionError("no %s verdict pending (state %s)"
                               % (_PENDING[state], STATE_NAMES[self.state]))

    def _reply(self, text):
        if text[:1] == b"5":
            self._errors += 1
        self._events.append(("reply", P.reply(text)))

    def _ok(self, text, state):
        self._reply(text)
        self.state = state

    def _close(self, text=None):
        if text is not None:
            self._reply(text)
            self._events.append(("close",))
        self.state = CLOSED
        self._buf[:] = b""
        self._pos = 0

    def _reset(self):
        """Forget the mail transaction (RSET, EHLO/HELO, end of DATA, STARTTLS)."""
        self.mail_from, self.mail_params, self.rcpt_to, self._pending = None, [], [], None

    def _step(self):
        """Consume one unit of input; False when nothing can be done until bytes or a verdict come."""
        st = self.state
        if st == BODY:
            return self._body_step()
        if not st & (_CMD | _AUTH | REFUSED):
            return False
        line, self._discard = take_line(self._buf, self._discard, st & _AUTH)
        if line is None:
            return False
        if line == TOO_LONG or line == BARE:
            self._ok(P.R_TOO_LONG if line == TOO_LONG else P.R_BARE_CMD, READY if st & _AUTH else st)
        elif st & _AUTH:
            self._sasl_reply(self._sasl.feed(line))
        else:
            self._command(line)
        if self.policy.max_errors and self._errors >= self.policy.max_errors and self.state != CLOSED:
            self._close(P.R_ERRORS)
        return True

    def _command(self, line):
        if P.has_ctl(line):
            return self._reply(P.R_BADCHAR)
        verb, _sp, arg = line.partition(b" ")
        verb, arg = verb.upper(), arg.strip()
        if self.state == REFUSED and verb != b"QUIT":
            return self._reply(P.R_REFUSED)
        entry = _VERBS.get(verb)
        if entry is None:
            return self._reply(P.R_UNKNOWN if verb else P.R_EMPTY)
        handler, allowed, seq = entry
        if not self.state & allowed:
            self._reply(P.R_NEED_HELO if self.state == INIT else (seq or P.R_SEQ))
        elif isinstance(handler, bytes):
            self._reply(handler)                            # a fixed reply: NOOP HELP 502s
        else:
            getattr(self, handler)(verb, arg)

    def _out_of_sync(self):
        """Strict mode: input already buffered after a command that must end a pipelined group
        (EHLO, HELO, DATA; RFC 2920 §3.1, Postfix smtpd_forbid_unauth_pipelining)."""
        if self.policy.strict_pipelining and self._buf:
            self._close(P.R_SYNC)
            return True
        return False

    # ---- commands (handler(verb, arg); arg is stripped) ---------------------------------------
    def _hello(self, verb, arg):
        if not P.is_printable_ascii(arg):
            return self._reply(P.R_HELO_SYNTAX)          # G7: a rejected EHLO changes nothing
        if self._out_of_sync():
            return
        self._reset()
        self.helo_name, self.esmtp, self.state = arg.split()[0], verb == b"EHLO", READY
        if not self.esmtp:
            return self._reply(b"250 " + self.hostname)
        pol = self.policy
        self._events.append(("reply", P.ehlo_reply(self.hostname, pol.max_message_size,
                                                   pol.tls_available and not self.tls_active,
                                                   self._auth_allowed())))

    def _mail(self, verb, arg):
        self._envelope_cmd(arg, b"FROM:", P.R_MAIL_SYNTAX, W_MAIL, "mail")

    def _rcpt(self, verb, arg):
        if len(self.rcpt_to) >= self.policy.max_recipients and arg[:3].upper() == b"TO:":
            return self._reply(P.R_TOO_MANY)
        self._envelope_cmd(arg, b"TO:", P.R_RCPT_SYNTAX, W_RCPT, "rcpt")

    def _envelope_cmd(self, arg, prefix, syntax, state, kind):
        """MAIL FROM:<path> / RCPT TO:<path> [params]; strict "FROM:<", but a space after the colon
        is tolerated as Postfix does.  A bare <postmaster> recipient is accepted here."""
        if arg[:len(prefix)].upper() != prefix:
            return self._reply(syntax)
        addr, rest, err = P.parse_path(arg[len(prefix):].lstrip(b" "), kind == "mail", kind == "rcpt")
        params = []
        if err is None:
            params, err = P.parse_params(rest)
            if err is None:
                err = P.check_params(params, kind == "mail", self.policy.max_message_size)
        if err is not None:
            return self._reply(err)
        if kind == "rcpt" and addr.lower() == b"postmaster":
            self.rcpt_to.append(addr)
            return self._ok(P.R_RCPT_OK, RCPT)
        self._pending, self.state = (addr, params), state
        self._events.append((kind, addr, params))

    def _data(self, verb, arg):
        if arg:
            return self._reply(P.R_SYNTAX)
        if not self.rcpt_to:
            return self._reply(P.R_NO_RCPT)
        if self._out_of_sync():
            return
        pol = self.policy
        self.data = DataReader(self._events, pol.max_message_size, pol.max_received,
                               pol.bare_newlines == "normalize")
        self._ok(P.R_DATA, BODY)
        self._events.append(("data_start", self.mail_from, list(self.rcpt_to)))

    def _body_step(self):
        p = self.data.step(self._buf, self._pos)
        if p < 0:
            self._buf[:self._pos] = b""                  # compact once per batch, not per line
            self._pos = 0
            return False
        self._pos = p
        if self.data.done:
            self._buf[:p] = b""
            self._pos = 0
            if self.data.refusal is None:
                self.state = W_DATA
                self._events.append(("data_end",))
            else:
                self._reset()
                self._ok(self.data.refusal, READY)
        return True

    def _rset(self, verb, arg):
        if arg:
            return self._reply(P.R_SYNTAX)
        self._reset()
        self._ok(P.R_OK, INIT if self.state == INIT else READY)

    def _quit(self, verb, arg):
        if arg:
            return self._reply(P.R_SYNTAX)
        self._close(P.R_BYE)

    def _vrfy(self, verb, arg):
        self._reply(P.R_VRFY if arg else P.R_SYNTAX)

    def _starttls(self, verb, arg):
        if arg or self.tls_active or not self.policy.tls_available:
            return self._reply(P.R_SYNTAX if arg else (P.R_TLS_ACTIVE if self.tls_active else P.R_TLS_NA))
        self._ok(P.R_TLS_GO, W_TLS)
        self._events.append(("starttls",))
        self._buf[:] = b""                      # RFC 3207 §4.2: discard pipelined plaintext

    # ---- AUTH (RFC 4954; the exchange itself is smtpproto.SaslExchange) -----------------------
    def _auth_allowed(self):
        return self.policy.auth_available and (self.tls_active or self.policy.auth_without_tls)

    def _auth(self, verb, arg):
        if not self._auth_allowed():
            return self._reply(P.R_AUTH_TLS if self.policy.auth_available and self.policy.tls_available
                               else P.R_AUTH_NA)
        if self.auth_user is not None:
            return self._reply(P.R_AUTH_AGAIN)
        self._sasl = P.SaslExchange()
        self._sasl_reply(self._sasl.start(arg))

    def _sasl_reply(self, text):
        """A 334 keeps the exchange going (AUTH-PLAIN, -USER, -PASS), a refusal ends it, None
        (credentials complete) awaits the caller's verdict."""
        x = self._sasl
        if text is None:
            self.state = W_AUTH
            return self._events.append(("auth", x.mech, x.user, x.secret))
        self._ok(text, _SASL_STEP[x.step] if text[:4] == b"334 " else READY)
