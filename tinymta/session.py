"""Sans-IO SMTP server session: client bytes in, replies and events out (RFC 5321 server role).

It holds the SMTP state of one connection: command framing (CRLF only, 512-octet lines), the
command/state table, envelope (sender, accepted recipients), DATA framing (only <CRLF>.<CRLF>
ends DATA, dot-unstuffing, bare CR/LF policy, size, line length, Received counting), AUTH PLAIN/
LOGIN exchanges and the STARTTLS reset.  It must not know sockets, clocks, files, the spool, DNS,
relay rules, passwords, logging or threads: every decision needing those is handed to the caller
as a *verdict event*, and the session parses nothing further until the verdict arrives, so
pipelined replies can never overtake each other.  Grammar helpers live in smtpproto.py.

    s = Session(policy)                 policy: a Policy (or any object with the same attributes)
    s.greeting([refuse_reply]) -> bytes 220 banner; with e.g. b"554 5.7.1 No service" every
                                        command but QUIT then gets 503 (RFC 5321 §3.1)
    s.receive(data)                     buffer bytes read from the client (never parses)
    s.next_event() -> tuple | None      None: more bytes are needed, or s.pending is set
    s.wants_data() -> bool              False while the input buffer is full or input is dropped
    s.timeout_reply() / s.shutdown_reply() -> bytes   421 4.4.2 / 421 4.3.2; the session closes

Events (tuples; the caller handles them in order):
    ("reply", wire)                   write `wire` (CRLF-terminated bytes) to the client
    ("mail", sender, params)          verdict: s.accept_mail() or s.reject_mail(reply)
    ("rcpt", address, params)         verdict: s.accept_rcpt() or s.reject_rcpt(reply)
    ("data_start", sender, rcpts)     a body follows (after the 354); the final envelope
    ("body", chunk)                   body bytes, dot-unstuffed, CRLF lines; 4096 octets each but the last
    ("data_abort",)                   the message will be refused (size, bare CR/LF, long line, hops):
                                      drop what was received; the session reads to the real end and replies
    ("data_end",)                     verdict: s.message_accepted(queue_id) (250 only once durable)
                                      or s.message_failed(reply)
    ("auth", mech, user, password)    verdict: s.auth_result(ok[, reply])
    ("starttls",)                     flush replies, wrap the socket, then s.tls_started()
    ("close",)                        flush replies and close the connection (after 221 or 421/554)
sender/address are bytes (b"" for <>; source route stripped), params a list of (KEY, value|None).
A bare <postmaster> recipient is accepted by the session itself (RFC 5321 §4.5.1) and only
appears in s.rcpt_to.  A verdict method called when that verdict is not pending raises
SessionError; caller-supplied replies are validated (one line, 4xx/5xx).  No input bytes make
receive() or next_event() raise: an internal fault becomes 421 4.3.0 + close (s.last_error).
The envelope is kept here: s.helo_name, s.mail_from, s.mail_params, s.rcpt_to, s.auth_user,
s.tls_active, s.protocol() (Received "with"), s.received_count, s.header_bytes, s.message_size.
"""
from tinymta import smtpproto as P

# Theory of operation (cf. h11 _state.py).  One state at a time; `_VERBS` maps each verb to
# (handler, states in which it is allowed); elsewhere it gets its 503.  "W-" states await a
# caller verdict and parse nothing; BODY consumes DATA; AUTH-* read SASL response lines.
#
#   state      input / verdict                        -> state      output
#   INIT       EHLO/HELO name                          -> READY      250
#   INIT       NOOP RSET VRFY HELP                     -> INIT       250/250/252/214
#   READY      MAIL FROM:<p> (syntax ok)               -> W-MAIL     ("mail",...)
#   W-MAIL     accept_mail() / reject_mail(r)          -> MAIL/READY 250 2.1.0 / r
#   MAIL|RCPT  RCPT TO:<p> (syntax ok, under limit)    -> W-RCPT     ("rcpt",...)
#   W-RCPT     accept_rcpt() / reject_rcpt(r)          -> RCPT/(MAIL|RCPT)  250 2.1.5 / r
#   RCPT       DATA                                    -> BODY       354, ("data_start",...)
#   MAIL       DATA                                    -> MAIL       554 5.5.1 no valid recipients
#   BODY       lines (unstuffed)                       -> BODY       ("body",...) | ("data_abort",)
#   BODY       <CRLF>.<CRLF> refused                   -> READY      552/550/554 reply
#   BODY       <CRLF>.<CRLF>                           -> W-DATA     ("data_end",)
#   W-DATA     message_accepted(id) / message_failed(r)-> READY      250 2.0.0 / r
#   READY      AUTH PLAIN|LOGIN                        -> AUTH-*     334 | ("auth",...) -> W-AUTH
#   W-AUTH     auth_result(ok)                         -> READY      235 / 535
#   INIT|READY STARTTLS                                -> W-TLS      220, ("starttls",); input dropped
#   W-TLS      tls_started()                           -> INIT       (helo, txn, auth forgotten)
#   any cmd    EHLO/HELO -> READY; RSET -> READY (INIT stays INIT): transaction discarded
#   any cmd    QUIT                                    -> CLOSED     221, ("close",)
#   REFUSED    anything but QUIT                       -> REFUSED    503
INIT, READY, MAIL, RCPT, BODY = 1, 2, 4, 8, 16
W_MAIL, W_RCPT, W_DATA, W_AUTH, W_TLS = 32, 64, 128, 256, 512
AUTH_PLAIN, AUTH_USER, AUTH_PASS, REFUSED, CLOSED = 1024, 2048, 4096, 8192, 16384
STATE_NAMES = {INIT: "INIT", READY: "READY", MAIL: "MAIL", RCPT: "RCPT", BODY: "BODY",
               W_MAIL: "W-MAIL", W_RCPT: "W-RCPT", W_DATA: "W-DATA", W_AUTH: "W-AUTH",
               W_TLS: "W-TLS", AUTH_PLAIN: "AUTH-PLAIN", AUTH_USER: "AUTH-USER",
               AUTH_PASS: "AUTH-PASS", REFUSED: "REFUSED", CLOSED: "CLOSED"}
_CMD = INIT | READY | MAIL | RCPT
_AUTH = AUTH_PLAIN | AUTH_USER | AUTH_PASS
_WAIT = W_MAIL | W_RCPT | W_DATA | W_AUTH | W_TLS
_PENDING = {W_MAIL: "mail", W_RCPT: "rcpt", W_DATA: "data", W_AUTH: "auth", W_TLS: "tls"}

#          verb        handler     allowed in       503 text elsewhere (INIT: send HELO first)
_VERBS = {b"EHLO": ("_ehlo", _CMD, None), b"HELO": ("_helo", _CMD, None),
          b"MAIL": ("_mail", READY, P.R_NESTED), b"RCPT": ("_rcpt", MAIL | RCPT, P.R_NEED_MAIL),
          b"DATA": ("_data", MAIL | RCPT, P.R_NEED_MAIL), b"RSET": ("_rset", _CMD, None),
          b"NOOP": ("_noop", _CMD, None), b"QUIT": ("_quit", _CMD | REFUSED, None),
          b"VRFY": ("_vrfy", _CMD, None), b"HELP": ("_help", _CMD, None),
          b"EXPN": ("_unimpl", _CMD, None), b"STARTTLS": ("_starttls", INIT | READY, P.R_IN_TXN),
          b"AUTH": ("_auth", READY, P.R_IN_TXN)}
for _v in (b"TURN", b"ETRN", b"ATRN", b"BDAT", b"SEND", b"SOML", b"SAML"):
    _VERBS[_v] = ("_unimpl", _CMD, None)

CHUNK = 4096        # body event size
_WINDOW = 1024      # body bytes examined per step; > 1000-octet text line limit
_BUF_HIGH = 16384   # wants_data() turns False above this (larger than any legal line)
_TOO_LONG, _BARE = -1, -2


class SessionError(Exception):
    """A verdict method was called when that verdict was not pending (a caller bug)."""


class Policy:
    """What the session needs from the configuration; any object with these attributes works."""

    def __init__(self, hostname="localhost", max_message_size=1048576, max_recipients=100,
                 bare_newlines="reject", tls_available=False, auth_available=False,
                 auth_without_tls=False, max_received=100, strict_pipelining=False,
                 max_errors=20):
        self.hostname = hostname                  # str or bytes
        self.max_message_size = max_message_size  # octets; 0 = no limit (SIZE without a number)
        self.max_recipients = max_recipients      # per transaction; beyond -> 452 4.5.3
        self.bare_newlines = bare_newlines        # "reject" or "normalize" (content only)
        self.tls_available = tls_available        # advertise STARTTLS
        self.auth_available = auth_available      # advertise AUTH PLAIN LOGIN (after TLS...)
        self.auth_without_tls = auth_without_tls  # ...or also in clear
        self.max_received = max_received          # more Received: headers -> 554 5.4.6
        self.strict_pipelining = strict_pipelining  # input after EHLO/HELO/DATA -> 554 5.5.0
        self.max_errors = max_errors              # 5xx replies before 421 + close; 0 = never


class Session:
    def __init__(self, policy):
        self.policy = policy
        h = policy.hostname
        self.hostname = h.encode() if isinstance(h, str) else bytes(h)
        self.state = INIT
        self._buf = bytearray()
        self._events = []
        self._discard = False      # dropping the rest of an over-long command line
        self._pos = 0              # read offset into _buf (BODY only; 0 elsewhere)
        self._errors = 0
        self._mech = self._user = None
        self.last_error = None
        self.helo_name = None
        self.esmtp = self.tls_active = False
        self.auth_user = None
        self._reset()

    # ---- public interface -------------------------------------------------------------
    def greeting(self, refuse_reply=None):
        if refuse_reply is not None:
            self.state = REFUSED
            return P.reply(P.check_reply(refuse_reply, b"45"))
        return P.reply(b"220 " + self.hostname + b" ESMTP tinymta")

    def receive(self, data):
        if self.state & (W_TLS | CLOSED):
            return                 # plaintext after STARTTLS (CVE-2011-0411 class) or after close
        self._buf += data if isinstance(data, (bytes, bytearray)) else bytes(data)

    def next_event(self):
        try:
            while not self._events and self._step():
                pass
        except Exception as e:     # invariant 7: no input crashes the loop
            self.last_error = e
            self._events = [("reply", P.reply(P.R_INTERNAL)), ("close",)]
            self._close()
        return self._events.pop(0) if self._events else None

    @property
    def pending(self):
        """None, or which verdict the session waits for: mail rcpt data auth tls."""
        return _PENDING.get(self.state)

    def wants_data(self):
        return not (self.state & (W_TLS | CLOSED)) and len(self._buf) - self._pos < _BUF_HIGH

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
        if ok:
            self.auth_user = self._user
        text = reply if reply is not None else (P.R_AUTH_OK if ok else P.R_AUTH_FAIL)
        self._ok(P.check_reply(text, b"2" if ok else b"45"), READY)
        self._mech = self._user = None

    def tls_started(self):
        self._expect(W_TLS)
        self._buf[:] = b""
        self.tls_active = True
        self.helo_name, self.esmtp, self.auth_user = None, False, None
        self._reset()
        self.state = INIT

    # ---- plumbing ------------------------------------------------------------------------
    def _expect(self, state):
        if self.state != state:
            raise SessionError("no %s verdict pending (state %s)" % (
                _PENDING.get(state), STATE_NAMES.get(self.state)))

    def _ok(self, text, state):
        self._reply(text)
        self.state = state

    def _reply(self, text):
        if text[:1] == b"5":
            self._errors += 1
        self._events.append(("reply", P.reply(text)))

    def _close(self):
        self.state = CLOSED
        self._buf[:] = b""

    def _reset(self):
        """Forget the mail transaction (RSET, EHLO, end of DATA, STARTTLS)."""
        self.mail_from = None
        self.mail_params = []
        self.rcpt_to = []
        self._pending = None

    def _step(self):
        """Consume one unit of input; False when nothing can be done until bytes/verdict arrive."""
        st = self.state
        if st & (_WAIT | CLOSED):
            return False
        if st == BODY:
            return self._body_step()
        line = self._take_line(P.AUTH_LIMIT if st & _AUTH else self._limit())
        if line is None:
            return False
        if line == _TOO_LONG or line == _BARE:
            self._reply(P.R_TOO_LONG if line == _TOO_LONG else P.R_BARE_CMD)
            if st & _AUTH:
                self.state = READY
        elif st & _AUTH:
            self._sasl(line)
        else:
            self._command(line)
        lim = self.policy.max_errors
        if lim and self._errors >= lim and self.state != CLOSED:
            self._events.append(("reply", P.reply(P.R_ERRORS)))
            self._events.append(("close",))
            self._close()
        return True

    def _limit(self):
        verb = bytes(self._buf[:5]).upper()
        return P.AUTH_LIMIT if verb == b"AUTH " else (P.MAIL_LIMIT if verb == b"MAIL " else P.CMD_LIMIT)

    def _take_line(self, limit):
        """Next command line without CRLF, None (need bytes), _TOO_LONG or _BARE.  A line ends at
        LF; it is good only when that LF follows a CR and no other CR is inside (RFC 5321 §2.3.8)."""
        buf = self._buf
        if self._discard:
            i = buf.find(b"\n")
            if i < 0:
                buf[:] = b""
                return None
            buf[:i + 1] = b""
            self._discard = False
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) >= limit:          # no room for a terminator: refuse, drop to the LF
                buf[:] = b""
                self._discard = True
                return _TOO_LONG
            return None
        if i + 1 > limit:
            buf[:i + 1] = b""
            return _TOO_LONG
        line = bytes(buf[:i + 1])
        buf[:i + 1] = b""
        if i == 0 or line[i - 1] != 13 or line.find(b"\r") < i - 1:
            return _BARE
        return line[:-2]

    def _command(self, line):
        if P.has_ctl(line):
            return self._reply(P.R_BADCHAR)
        verb, _sp, arg = line.partition(b" ")
        verb, arg = verb.upper(), arg.strip()
        if self.state == REFUSED and verb != b"QUIT":
            return self._reply(P.R_REFUSED)
        if not verb:
            return self._reply(P.R_EMPTY)
        entry = _VERBS.get(verb)
        if entry is None:
            return self._reply(P.R_UNKNOWN)
        name, allowed, seq = entry
        if not (self.state & allowed):
            return self._reply(P.R_NEED_HELO if self.state == INIT else (seq or P.R_SEQ))
        getattr(self, name)(arg)

    def _sync_violation(self):
        """Input already buffered after a command that must end a pipelined group (RFC 2920 §3.1)."""
        if self.policy.strict_pipelining and self._buf:
            self._reply(P.R_SYNC)
            self._events.append(("close",))
            self._close()
            return True
        return False

    # ---- commands ----------------------------------------------------------------------
    def _hello(self, arg, esmtp):
        if not P.is_printable_ascii(arg):
            return self._reply(P.R_EHLO_SYNTAX if esmtp else P.R_HELO_SYNTAX)   # state unchanged
        if self._sync_violation():
            return
        self._reset()
        self.helo_name, self.esmtp, self.state = arg.split()[0], esmtp, READY
        if not esmtp:
            return self._reply(b"250 " + self.hostname)
        pol = self.policy
        size = pol.max_message_size
        lines = [self.hostname, b"PIPELINING", b"SIZE %d" % size if size else b"SIZE",
                 b"8BITMIME", b"ENHANCEDSTATUSCODES"]
        if pol.tls_available and not self.tls_active:
            lines.append(b"STARTTLS")
        if self._auth_allowed():
            lines.append(b"AUTH PLAIN LOGIN")
        lines.append(b"HELP")
        self._events.append(("reply", P.multiline(b"250", lines)))

    def _ehlo(self, arg):
        self._hello(arg, True)

    def _helo(self, arg):
        self._hello(arg, False)

    def _mail(self, arg):
        if arg[:5].upper() != b"FROM:":
            return self._reply(P.R_MAIL_SYNTAX)
        addr, rest, err = P.parse_path(arg[5:].lstrip(b" "), True, False)
        params = None
        if err is None:
            params, err = P.parse_params(rest)
        for key, value in params or ():
            if err is not None:
                break
            if key == b"SIZE":
                if not P.is_digits(value, 20):
                    err = P.R_SYNTAX
                elif self.policy.max_message_size and int(value) > self.policy.max_message_size:
                    err = P.R_TOO_BIG
            elif key == b"BODY":
                if value is None or value.upper() not in (b"7BIT", b"8BITMIME"):
                    err = P.R_SYNTAX
            elif key == b"AUTH":               # RFC 4954 §5: accepted, may be ignored
                if value is None:
                    err = P.R_SYNTAX
            else:
                err = P.R_PARAM
        if err is not None:
            return self._reply(err)
        self._pending = (addr, params)
        self.state = W_MAIL
        self._events.append(("mail", addr, params))

    def _rcpt(self, arg):
        if arg[:3].upper() != b"TO:":
            return self._reply(P.R_RCPT_SYNTAX)
        addr, rest, err = P.parse_path(arg[3:].lstrip(b" "), False, True)
        params = None
        if err is None:
            params, err = P.parse_params(rest)
            if err is None and params:
                err = P.R_PARAM                # no RCPT parameters offered (no DSN)
        if err is not None:
            return self._reply(err)
        if len(self.rcpt_to) >= self.policy.max_recipients:
            return self._reply(P.R_TOO_MANY)
        if addr.lower() == b"postmaster":      # RFC 5321 §4.5.1: always accepted
            self.rcpt_to.append(addr)
            return self._ok(P.R_RCPT_OK, RCPT)
        self._pending = (addr, params)
        self.state = W_RCPT
        self._events.append(("rcpt", addr, params))

    def _data(self, arg):
        if arg:
            return self._reply(P.R_NO_ARGS)
        if not self.rcpt_to:
            return self._reply(P.R_NO_RCPT)
        if self._sync_violation():
            return
        self.state = BODY
        self._bol = self._prev_crlf = self._in_headers = True
        self._linelen = self.message_size = self.received_count = 0
        self.header_bytes = None
        self._refusal = None
        self._out = bytearray()
        self._events.append(("reply", P.reply(P.R_DATA)))
        self._events.append(("data_start", self.mail_from, list(self.rcpt_to)))

    def _rset(self, arg):
        if arg:
            return self._reply(P.R_NO_ARGS)
        self._reset()
        if self.state != INIT:
            self.state = READY
        self._reply(P.R_OK)

    def _noop(self, arg):
        self._reply(P.R_OK)

    def _quit(self, arg):
        if arg:
            return self._reply(P.R_NO_ARGS)
        self._reply(P.R_BYE)
        self._events.append(("close",))
        self._close()

    def _vrfy(self, arg):
        self._reply(P.R_VRFY if arg else P.R_VRFY_SYNTAX)

    def _help(self, arg):
        self._reply(P.R_HELP)

    def _unimpl(self, arg):
        self._reply(P.R_NOT_IMPL)

    def _starttls(self, arg):
        if arg:
            return self._reply(P.R_NO_ARGS)
        if self.tls_active:
            return self._reply(P.R_TLS_ACTIVE)
        if not self.policy.tls_available:
            return self._reply(P.R_TLS_NA)
        self._reply(P.R_TLS_GO)
        self._events.append(("starttls",))
        self._buf[:] = b""                     # RFC 3207 §4.2: discard pipelined plaintext
        self.state = W_TLS

    # ---- AUTH (RFC 4954, RFC 4616, LOGIN) -------------------------------------------------
    def _auth_allowed(self):
        pol = self.policy
        return pol.auth_available and (self.tls_active or pol.auth_without_tls)

    def _auth(self, arg):
        if not self._auth_allowed():
            tls_would_help = self.policy.auth_available and self.policy.tls_available
            return self._reply(P.R_AUTH_TLS if tls_would_help else P.R_AUTH_NA)
        if self.auth_user is not None:
            return self._reply(P.R_AUTH_AGAIN)
        words = arg.split()
        if not words or len(words) > 2:
            return self._reply(P.R_AUTH_SYNTAX)
        mech = words[0].upper()
        if mech != b"PLAIN" and mech != b"LOGIN":
            return self._reply(P.R_AUTH_MECH)
        self._mech = mech
        if len(words) == 2:
            return self._sasl_response(words[1], AUTH_PLAIN if mech == b"PLAIN" else AUTH_USER)
        self._ok(P.R_AUTH_EMPTY if mech == b"PLAIN" else P.R_AUTH_USER,
                 AUTH_PLAIN if mech == b"PLAIN" else AUTH_USER)

    def _sasl(self, line):
        if line == b"*":
            return self._ok(P.R_AUTH_CANCEL, READY)
        self._sasl_response(line, self.state)

    def _sasl_response(self, text, step):
        data = P.b64decode(text)
        if data is None:
            return self._ok(P.R_AUTH_B64, READY)
        if step == AUTH_USER:
            self._user = data
            return self._ok(P.R_AUTH_PASS, AUTH_PASS)
        if step == AUTH_PLAIN:
            parts = data.split(b"\0")
            if len(parts) != 3 or not parts[1] or (parts[0] and parts[0] != parts[1]):
                return self._ok(P.R_AUTH_FAIL if len(parts) == 3 else P.R_AUTH_B64, READY)
            self._user, data = parts[1], parts[2]
        self.state = W_AUTH
        self._events.append(("auth", self._mech, self._user, data))

    # ---- DATA (RFC 5321 §4.1.1.4, §4.5.2; protocol.md §1.12) -------------------------------
    def _body_step(self):
        """Split off one line (or a _WINDOW piece of a long one) and handle it.  A line ends in
        CRLF, a bare LF or a bare CR; only CRLF is 'real'.  Decisions use whole lines or full
        windows, never a partial view, so any split of the input gives the same events.  Bytes
        are consumed by advancing _pos; the buffer is compacted once per batch."""
        buf, p = self._buf, self._pos
        n = len(buf) - p
        w = p + (_WINDOW if n > _WINDOW else n)
        lf = buf.find(b"\n", p, w)
        cr = buf.find(b"\r", p, lf if lf >= 0 else w)
        if cr >= 0:
            if cr + 1 >= len(buf):
                return self._compact()     # is it CRLF or a bare CR?  wait for the next byte
            real = buf[cr + 1] == 10
            end, term = cr, (2 if real else 1)
        elif lf >= 0:
            end, term, real = lf, 1, False
        elif n >= _WINDOW:
            end, term, real = w, 0, False
        else:
            return self._compact()
        content = bytes(buf[p:end])
        self._pos = end + term
        if self._bol and term == 2 and self._prev_crlf and content == b".":
            self._compact()
            self._end_of_data()
        else:
            self._body_line(content, term, real)
        return True

    def _compact(self):
        if self._pos:
            self._buf[:self._pos] = b""
            self._pos = 0
        return False

    def _body_line(self, content, term, real):
        if self._bol:
            self._linelen = 0
            if content[:1] == b".":
                content = content[1:]      # transparency: drop the stuffed dot
            if self._in_headers:
                if term and not content:
                    self._in_headers = False
                    self.header_bytes = self.message_size + 2
                elif content[:9].lower() == b"received:":
                    self.received_count += 1
                    if self.received_count > self.policy.max_received:
                        self._refuse(P.R_HOPS)
        self._linelen += len(content)
        if self._linelen > P.TEXT_LINE_MAX:
            self._refuse(P.R_LONG_LINE)
        if term and not real and self.policy.bare_newlines != "normalize":
            self._refuse(P.R_BARE_DATA)
        self._bol = term != 0
        if term:
            self._prev_crlf = real
            content += b"\r\n"             # bare CR/LF normalised (reject mode drops it anyway)
        if self._refusal is not None:
            return
        self.message_size += len(content)
        limit = self.policy.max_message_size
        if limit and self.message_size > limit:
            return self._refuse(P.R_TOO_BIG)
        out = self._out
        out += content
        while len(out) >= CHUNK:
            self._events.append(("body", bytes(out[:CHUNK])))
            out[:CHUNK] = b""

    def _refuse(self, text):
        if self._refusal is None:
            self._refusal = text
            self._out = bytearray()
            self._events.append(("data_abort",))

    def _end_of_data(self):
        if self._refusal is not None:
            self._reset()
            return self._ok(self._refusal, READY)
        if self._out:
            self._events.append(("body", bytes(self._out)))
        self._out = bytearray()
        self.state = W_DATA
        self._events.append(("data_end",))
