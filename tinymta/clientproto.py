"""SMTP grammar for the relay client (tinymta.client): reply framing, the EHLO capability list,
message-body encoding (stray CR/LF to CRLF, dot-stuffing), SASL client responses, the texts and
timeouts of what the client decides itself; and Connection, the connection half of client.Client
(its plumbing and the setup dialogue: greeting, EHLO/HELO, STARTTLS, AUTH), split off to keep
each module under 400 lines.

Nothing here knows sockets, clocks or files.  MicroPython-clean: no ``re``, no recursion, no
keyword arguments to builtin methods, bytes only, no ``int in bytes``.
"""
import binascii

CRLF = b"\r\n"

# Reply framing limits.  RFC 5321 §4.5.3.1.5 caps reply lines at 512 octets; real servers exceed
# it a little, so the client accepts up to LINE_MAX (longer: a garbled reply) and keeps at most
# LINES_MAX lines of one multi-line reply (later lines are read and dropped), TEXT_MAX octets of
# text in an event.  BODY_BUF_MAX: bytes buffered while the client writes a message body.
LINE_MAX = 2048
LINES_MAX = 100
TEXT_MAX = 1000
BODY_BUF_MAX = 16384
GARBLED = -1                 # ReplyReader.take() result for input that is no SMTP reply

# RFC 5321 §4.5.3.2 timeouts (ms), one per thing awaited; "command" covers EHLO/HELO, STARTTLS,
# AUTH, RSET, QUIT, a TLS handshake and an idle connection (§4.5.3.2.7's server minimum).
TIMEOUTS = {"greeting": 300000, "mail": 300000, "rcpt": 300000, "data": 120000,
            "block": 180000, "dot": 600000, "command": 300000}

# Texts of the conditions the client detects itself (no reply from the server carries them).
# Enhanced codes: RFC 3463 (4.4.1 no answer, 4.4.2 bad connection, 4.5.0 protocol, 4.7.x security).
T_CONNECT = b"4.4.1 Connection failed"
T_NO_GREETING = b"4.4.1 No greeting from the server"
T_TIMEOUT = b"4.4.2 Timeout waiting for "
T_BODY_TIMEOUT = b"4.4.2 Timeout sending the message"
T_TLS_TIMEOUT = b"4.4.2 Timeout in the TLS handshake"
T_LOST = b"4.4.2 Connection closed by the server"
T_GARBLED = b"4.5.0 Garbled reply from the server"
T_UNEXPECTED = b"4.5.0 Unexpected reply from the server: "
T_BODY_DATA = b"4.5.0 Server sent data while the message was being sent"
T_ABORTED = b"4.3.0 Message transfer aborted by the client"
T_NO_STARTTLS = b"4.7.10 Server does not offer STARTTLS, and TLS is required"
T_TLS_FAILED = b"4.7.5 TLS handshake failed: "
T_AUTH_CLEAR = b"4.7.10 Refusing to send credentials without TLS"
T_NO_AUTH = b"4.7.0 Server offers no AUTH PLAIN or LOGIN"
T_TOO_BIG = b"5.3.4 Message size exceeds fixed maximum message size"
T_NO_8BIT = b"5.6.3 Server does not offer 8BITMIME, and the message is 8-bit"


class ReplyReader:
    """Cuts SMTP replies off the front of a bytearray (RFC 5321 §4.2, §4.2.1): ``ddd text`` lines,
    ``ddd-text`` continuation lines, a bare ``ddd``.  A line ends at LF (a CR before it is
    dropped: some servers end lines with a bare LF).  A reply code's first digit must be 2-5.
    Multi-line replies should repeat one code; the last line's code counts (as smtplib does).
    It keeps the lines of a reply not yet complete, so a reply may arrive split at any byte."""

    def __init__(self):
        self.lines = []
        self.count = 0

    def reset(self):
        self.lines = []
        self.count = 0

    def take(self, buf):
        """One complete reply ``(code, lines)`` (code an int, lines the texts after the code and
        separator), None when more bytes are needed, or GARBLED (the stream is unusable)."""
        while True:
            i = buf.find(b"\n")
            if i < 0:
                return GARBLED if len(buf) > LINE_MAX else None
            if i > LINE_MAX:
                return GARBLED
            line = bytes(buf[:i])
            buf[:i + 1] = b""
            if line[-1:] == b"\r":
                line = line[:-1]
            sep = line[3:4]
            if not _is_code(line) or (sep != b"" and sep != b" " and sep != b"-"):
                return GARBLED
            self.count += 1
            if self.count <= LINES_MAX:
                self.lines.append(line[4:])
            if sep != b"-":
                lines = self.lines
                self.reset()
                return int(line[:3]), lines


def _is_code(line):
    if len(line) < 3 or line[0] < 50 or line[0] > 53:          # b"2" .. b"5"
        return False
    return 48 <= line[1] <= 57 and 48 <= line[2] <= 57


def reply_text(lines):
    """A reply's lines as one line of text for events: joined by spaces, an enhanced code that a
    continuation line repeats from the first line dropped, control characters made spaces, at
    most TEXT_MAX octets."""
    first = lines[0] if lines else b""
    ec = first.split(b" ", 1)[0] + b" "
    if ec.count(b".") != 2:
        ec = None
    parts = [first]
    for ln in lines[1:]:
        parts.append(ln[len(ec):] if ec is not None and ln.startswith(ec) else ln)
    return clean(b" ".join(parts))[:TEXT_MAX]


def clean(text):
    """Bytes with every control character (TAB included) and DEL replaced by a space."""
    for c in text:
        if c < 32 or c == 127:
            return bytes((32 if (b < 32 or b == 127) else b) for b in text)
    return bytes(text)


def to_bytes(x):
    """bytes from bytes, bytearray, memoryview or str; anything else through str()."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    return (x if isinstance(x, str) else str(x)).encode()


def parse_ehlo(lines):
    """The EHLO reply's extensions as a dict KEYWORD -> parameters (both bytes, the keyword upper
    case; RFC 5321 §4.1.1.1).  The first line is the server's name, not an extension.  The old
    ``AUTH=LOGIN PLAIN`` form is read as AUTH; AUTH parameters of several lines are joined."""
    ext = {}
    for ln in lines[1:]:
        words = ln.split(b" ", 1)
        key = words[0].upper()
        params = words[1].strip() if len(words) > 1 else b""
        if key.startswith(b"AUTH="):
            params, key = (key[5:] + b" " + params).strip(), b"AUTH"
        if key in ext and key == b"AUTH":
            params = ext[key] + b" " + params
        if key:
            ext[key] = params
    return ext


def size_limit(ext):
    """The SIZE extension's fixed maximum (RFC 1870), 0 when absent or unlimited."""
    v = ext.get(b"SIZE", b"")
    return int(v) if v and v.isdigit() and len(v) <= 18 else 0


def auth_mechs(ext):
    return ext.get(b"AUTH", b"").upper().split()


def b64(data):
    return binascii.b2a_base64(data)[:-1]           # drop the trailing newline


def auth_plan(mechs, user, password):
    """The AUTH exchange to run (RFC 4954; PLAIN RFC 4616 preferred, LOGIN as fallback): the
    first command and the responses to send, one per 334 challenge; None if neither is offered.
    PLAIN goes as an initial response unless the command would pass 512 octets (RFC 4954 §4)."""
    if b"PLAIN" in mechs:
        resp = b64(b"\0" + user + b"\0" + password)
        if len(resp) + 13 <= 512:
            return b"AUTH PLAIN " + resp + CRLF, []
        return b"AUTH PLAIN" + CRLF, [resp + CRLF]
    if b"LOGIN" in mechs:
        return b"AUTH LOGIN" + CRLF, [b64(user) + CRLF, b64(password) + CRLF]
    return None


def mail_command(sender, size, eight_bit, ext):
    """MAIL FROM with only the parameters the server offered: SIZE= (RFC 1870) when a size is
    known, BODY=8BITMIME (RFC 6152) for an 8-bit message."""
    cmd = b"MAIL FROM:<" + sender + b">"
    if size is not None and b"SIZE" in ext:
        cmd += b" SIZE=%d" % size
    if eight_bit and b"8BITMIME" in ext:
        cmd += b" BODY=8BITMIME"
    return cmd + CRLF


def check_address(addr):
    """bytes of a path without its angle brackets; ValueError for a control character (CR, LF,
    NUL...) or an angle bracket, which could inject a command."""
    addr = to_bytes(addr)
    for c in addr:
        if c < 32 or c == 127 or c == 60 or c == 62:
            raise ValueError("bad address %r" % (addr,))
    return addr


class BodyEncoder:
    """Message content to DATA wire bytes (RFC 5321 §4.5.2, §2.3.8; protocol.md SM5): every bare
    CR and bare LF becomes CRLF, a line starting with "." gets one more, and end() closes with
    CRLF.CRLF, adding a CRLF first when the content did not end with one.  Chunks may split a
    line, even a CRLF, anywhere: a CR that ends a chunk is held until the next one shows what
    follows it.  Only replace/count/startswith/endswith run on the data (no loop per byte)."""

    def __init__(self):
        self.bol = True          # the output so far ends a line (or is empty)
        self.cr = False          # a CR is held back from the previous chunk
        self.size = 0            # octets produced

    def feed(self, chunk):
        data = to_bytes(chunk)
        if self.cr:
            data = b"\r" + data
        self.cr = data[-1:] == b"\r"
        if self.cr:
            data = data[:-1]
        return self._out(data)

    def end(self):
        tail = self._out(b"\r") if self.cr else b""
        self.cr = False
        if not self.bol:
            tail += CRLF
            self.size += 2
        self.bol = True
        self.size += 3
        return tail + b".\r\n"

    def _out(self, data):
        if not data:
            return b""
        n = data.count(b"\r\n")
        if n != data.count(b"\r") or n != data.count(b"\n"):
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if self.bol and data[:1] == b".":
            data = b"." + data
        if data.find(b"\r\n.") >= 0:
            data = data.replace(b"\r\n.", b"\r\n..")
        self.bol = data.endswith(CRLF)
        self.size += len(data)
        return data


# ---- the connection half of client.Client --------------------------------------------------
# Client states (client.py has the theory of operation).  AWAIT: what a reply answers -> (error
# stage, timeout key, handler method, name in a timeout text).
WAIT, READY, W_TLS, BODY, CLOSED = 1, 2, 4, 8, 16
STATE_NAMES = {WAIT: "WAIT", READY: "READY", W_TLS: "W-TLS", BODY: "BODY", CLOSED: "CLOSED"}
TLS_MODES = ("none", "opportunistic", "starttls", "implicit")
AWAIT = {"greeting": (b"GREETING", "greeting", "_on_greeting", b"greeting"),
         "ehlo": (b"EHLO", "command", "_on_ehlo", b"EHLO"),
         "helo": (b"EHLO", "command", "_on_helo", b"HELO"),
         "starttls": (b"TLS", "command", "_on_starttls", b"STARTTLS"),
         "auth": (b"AUTH", "command", "_on_auth", b"AUTH"),
         "rset": (b"MAIL", "command", "_on_rset", b"RSET"),
         "mail": (b"MAIL", "mail", "_on_mail", b"MAIL"),
         "rcpt": (b"RCPT", "rcpt", "_on_rcpt", b"RCPT"),
         "data": (b"DATA", "data", "_on_data", b"DATA"),
         "dot": (b"DATA", "dot", "_on_dot", b"end of data"),
         "void": (b"DATA", "dot", "_on_void", b"end of data"),
         "quit": (b"QUIT", "command", "_on_quit", b"QUIT")}
QUIT = b"QUIT\r\n"


class ClientError(Exception):
    """A method was called while the client's state does not allow it (a caller bug)."""


class Connection:
    """The connection half of client.Client: event/expectation plumbing, and the reply handlers
    of the setup dialogue (greeting, EHLO/HELO, STARTTLS, AUTH) up to the first READY.  Client
    adds the public interface, the reply loop and the mail transaction.  Not used alone."""

    def _check(self, state, name):
        if self.state != state:
            raise ClientError("%s() in state %s" % (name, STATE_NAMES[self.state]))

    def _stage(self):
        st = self.state
        if st == WAIT and self._expect:
            return AWAIT[self._expect[0][0]][0]
        return b"TLS" if st == W_TLS else (b"DATA" if st == BODY else b"MAIL")

    def _send(self, data, expect):
        self._events.append(("send", data))
        self._expect.append(expect)
        self.progress += 1

    def _fail(self, stage, code, text, temporary=True, quit=False):
        if quit:
            self._events.append(("send", QUIT))
        self._events.append(("error", stage, code, text, temporary))
        self._events.append(("closed",))
        self._close()

    def _refused(self, stage, code, text, temporary=True):
        """A refusal while the dialogue is in step: QUIT politely, then the error (a 2xx/3xx
        where a refusal is taken is out of place: no QUIT, 451)."""
        if code < 400:
            return self._protocol(stage, text)
        self._fail(stage, code, text, temporary, True)

    def _protocol(self, stage, text):
        self._fail(stage, 451, T_UNEXPECTED + text[:200])

    def _close(self):
        self.state = CLOSED
        self._buf[:] = b""
        self._expect, self._plan, self._encoder = [], [], None

    def _on_greeting(self, code, lines, text, arg):
        if code // 100 != 2:
            return self._refused(b"GREETING", code, text)
        self._send(b"EHLO " + self.helo + CRLF, ("ehlo", None))

    def _on_ehlo(self, code, lines, text, arg):
        if code // 100 == 2:
            self.esmtp, self.extensions = True, parse_ehlo(lines)
            return self._after_hello()
        if code // 100 == 5:
            return self._send(b"HELO " + self.helo + CRLF, ("helo", None))
        self._refused(b"EHLO", code, text)

    def _on_helo(self, code, lines, text, arg):
        if code // 100 != 2:
            return self._refused(b"EHLO", code, text, code // 100 != 5)
        self.esmtp, self.extensions = False, {}
        self._after_hello()

    def _after_hello(self):
        """After EHLO/HELO: STARTTLS, AUTH, or nothing to send (then READY follows)."""
        ext = self.extensions
        self.pipelining = b"PIPELINING" in ext
        if not self.tls_active and not self._tls_refused and \
                (self.tls == "opportunistic" or self.tls == "starttls"):
            if b"STARTTLS" in ext:
                return self._send(b"STARTTLS\r\n", ("starttls", None))
            if self.tls == "starttls":
                return self._refused(b"TLS", 451, T_NO_STARTTLS)
        if self.auth is not None and not self.authenticated:
            if not self.tls_active:
                return self._refused(b"AUTH", 451, T_AUTH_CLEAR)
            plan = auth_plan(auth_mechs(ext), self.auth[0], self.auth[1])
            if plan is None:
                return self._refused(b"AUTH", 451, T_NO_AUTH)
            self._send(plan[0], ("auth", plan[1]))

    def _on_starttls(self, code, lines, text, arg):
        if code // 100 == 2:
            self._buf[:] = b""                      # RFC 3207 §4.2: no plaintext past the 220
            self._reader.reset()
            self.state = W_TLS
            return self._events.append(("starttls",))
        if self.tls == "starttls" or code // 100 == 3:
            return self._refused(b"TLS", code, text)
        self._tls_refused = True                    # opportunistic: go on in plain text
        self._after_hello()

    def _on_auth(self, code, lines, text, responses):
        if code // 100 == 3 and responses:
            return self._send(responses[0], ("auth", responses[1:]))
        if code // 100 == 2:
            self.authenticated = True
        elif code // 100 == 3:
            self._protocol(b"AUTH", text)           # the server wants more than we have
        else:
            self._refused(b"AUTH", code, text)
