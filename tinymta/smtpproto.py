"""SMTP grammar for the server session: reply texts, paths, ESMTP parameters, the EHLO reply, and
SaslExchange, the AUTH PLAIN/LOGIN sub-dialogue (line framing and the DATA reader: smtpdata).

Pure functions over ``bytes`` (RFC 5321 §4.1.2 grammar, RFC 1870/6152/4954 parameters, RFC 4648
base64) plus one sans-IO class.  Nothing here knows sockets, clocks, files, the spool, relay policy,
passwords or the session's command state.  MicroPython-clean: no ``re``, no recursion, no keyword
arguments to builtin methods, no ``int in bytearray`` (byte classes are 256-entry lookup tables).
"""
import binascii

CRLF = b"\r\n"

# Path limits (RFC 5321 §4.5.3.1); line-length limits are with the framing, in smtpdata.
LOCAL_MAX = 64
DOMAIN_MAX = 255
PATH_MAX = 256

# Reply texts (protocol.md §2.4).  Every 2xx/4xx/5xx carries an enhanced code (RFC 2034) except
# the greeting and the HELO/EHLO replies; 3xx carry none.  No CRLF: the session adds it.
R_OK = b"250 2.0.0 Ok"
R_MAIL_OK = b"250 2.1.0 Ok"
R_RCPT_OK = b"250 2.1.5 Ok"
R_QUEUED = b"250 2.0.0 Ok: queued as "
R_DATA = b"354 End data with <CR><LF>.<CR><LF>"
R_BYE = b"221 2.0.0 Bye"
R_VRFY = b"252 2.0.0 Cannot VRFY user; will accept message and attempt delivery"
R_HELP = b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
R_TLS_GO = b"220 2.0.0 Ready to start TLS"
R_AUTH_OK = b"235 2.7.0 Authentication successful"
R_AUTH_EMPTY = b"334 "
R_AUTH_USER = b"334 VXNlcm5hbWU6"          # "Username:"
R_AUTH_PASS = b"334 UGFzc3dvcmQ6"          # "Password:"
R_SEQ = b"503 5.5.1 Error: bad sequence of commands"
R_NEED_HELO = b"503 5.5.1 Error: send HELO/EHLO first"
R_NEED_MAIL = b"503 5.5.1 Error: need MAIL command"
R_NESTED = b"503 5.5.1 Error: nested MAIL command"
R_IN_TXN = b"503 5.5.1 Error: MAIL transaction in progress"
R_REFUSED = b"503 5.5.1 Error: service refused, send QUIT"
R_NO_RCPT = b"554 5.5.1 Error: no valid recipients"
R_TLS_ACTIVE = b"503 5.5.1 Error: TLS already active"
R_TLS_NA = b"454 4.7.0 TLS not available"
R_AUTH_NA = b"503 5.5.1 Error: authentication not enabled"
R_AUTH_TLS = b"538 5.7.11 Encryption required for requested authentication mechanism"
R_AUTH_AGAIN = b"503 5.5.1 Error: already authenticated"
R_AUTH_MECH = b"504 5.5.4 Unrecognized authentication type"
R_AUTH_CANCEL = b"501 5.7.0 Authentication aborted"
R_AUTH_B64 = b"501 5.5.2 Cannot decode response"
R_AUTH_FAIL = b"535 5.7.8 Authentication credentials invalid"
R_UNKNOWN = b"500 5.5.2 Error: command not recognized"
R_EMPTY = b"500 5.5.2 Error: bad syntax"
R_BADCHAR = b"500 5.5.2 Error: invalid character in command"
R_BARE_CMD = b"500 5.5.2 Error: bare CR or LF in command line"
R_TOO_LONG = b"500 5.5.6 Error: line too long"
R_NOT_IMPL = b"502 5.5.1 Error: command not implemented"
R_SYNTAX = b"501 5.5.4 Syntax error in parameters"
R_HELO_SYNTAX = b"501 5.5.4 Syntax: EHLO/HELO hostname"
R_MAIL_SYNTAX = b"501 5.5.4 Syntax: MAIL FROM:<address>"
R_RCPT_SYNTAX = b"501 5.5.4 Syntax: RCPT TO:<address>"
R_BAD_SENDER = b"501 5.1.7 Bad sender address syntax"
R_BAD_RCPT = b"501 5.1.3 Bad recipient address syntax"
R_PATH_LONG = b"501 5.5.4 Path too long"
R_NON_ASCII = b"501 5.6.7 Non-ASCII address requires SMTPUTF8, which is not offered"
R_PARAM = b"555 5.5.4 Unsupported parameter"
R_TOO_MANY = b"452 4.5.3 Too many recipients"
R_TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size"
R_BARE_DATA = b"550 5.6.0 Bare CR or LF not allowed in message"
R_LONG_LINE = b"554 5.6.0 Message line longer than 1000 octets"
R_HOPS = b"554 5.4.6 Too many hops (Received headers)"
R_SYNC = b"554 5.5.0 Error: SMTP protocol synchronization"
R_ERRORS = b"421 4.7.0 Error: too many errors"
R_INTERNAL = b"421 4.3.0 Error: internal error"
R_TIMEOUT = b"421 4.4.2 Error: timeout exceeded"
R_SHUTDOWN = b"421 4.3.2 Service shutting down"


def _table(chars):
    t = bytearray(256)
    for c in chars:
        t[c] = 1
    return bytes(t)


_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HEX = _table(b"0123456789abcdefABCDEF")
_DIGIT = _table(b"0123456789")
_LDH = _table(_ALNUM + b"-")
_ATEXT = _table(_ALNUM + b"!#$%&'*+-/=?^_`{|}~")
_B64 = _table(_ALNUM + b"+/")
_PRINT = _table(bytes(range(32, 127)))
_QTEXT = _table(bytes(c for c in range(32, 127) if c != 34 and c != 92))   # qtextSMTP
_VALUE = _table(bytes(c for c in range(33, 127) if c != 61))               # esmtp-value
_CTL = _table(bytes(c for c in range(0, 32) if c != 9) + b"\x7f")           # controls but TAB


def _all(s, table):
    """True if ``s`` is non-empty and every octet is in ``table``."""
    for c in s:
        if not table[c]:
            return False
    return len(s) > 0


def reply(text):
    """One reply line as wire bytes: ``text`` (no CRLF) plus CRLF."""
    return bytes(text) + CRLF


def multiline(code, lines):
    """``code`` (b"250") and a list of texts -> ``250-a\\r\\n250-b\\r\\n250 c\\r\\n``."""
    last = len(lines) - 1
    return b"".join(code + (b"-" if i < last else b" ") + lines[i] + CRLF for i in range(len(lines)))


def ehlo_reply(hostname, max_size, starttls, auth):
    """The 250 EHLO reply as wire bytes: the extensions offered (never CHUNKING, DSN, SMTPUTF8)."""
    lines = [hostname, b"PIPELINING", b"SIZE %d" % max_size if max_size else b"SIZE", b"8BITMIME",
             b"ENHANCEDSTATUSCODES"]
    if starttls:
        lines.append(b"STARTTLS")
    if auth:
        lines.append(b"AUTH PLAIN LOGIN")
    return multiline(b"250", lines + [b"HELP"])


def check_reply(text, allowed):
    """Validate a caller-supplied reply (str or bytes, CRLF optional) and return it without CRLF;
    ValueError unless it is one line of <= 510 octets, ``ddd`` or ``ddd text``, first digit in
    ``allowed`` (b"45" for refusals), no control characters: a caller cannot corrupt the stream."""
    text = bytes(text.encode() if isinstance(text, str) else text)
    if text.endswith(CRLF):
        text = text[:-2]
    if len(text) > 510 or allowed.find(text[:1]) < 0 or not _all(text[:3], _DIGIT) or \
            len(text) < 3 or (len(text) > 3 and text[3:4] != b" ") or has_ctl(text):
        raise ValueError("bad SMTP reply %r" % (text,))
    return text


def has_ctl(line):
    """True if ``line`` holds a control character other than TAB (NUL, DEL, ...)."""
    for c in line:
        if _CTL[c]:
            return True
    return False


def is_printable_ascii(s):
    """Non-empty and only octets 32..126 (EHLO/HELO argument)."""
    return _all(s, _PRINT)


def is_digits(s, maxlen):
    return len(s) <= maxlen and _all(s, _DIGIT)


def _dot_string_ok(s):
    """Dot-string = Atom *("." Atom) (RFC 5321 §4.1.2)."""
    for atom in s.split(b"."):
        if not _all(atom, _ATEXT):
            return False
    return True


def _domain_ok(d):
    """Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]."""
    for label in d.split(b"."):
        if not _all(label, _LDH) or len(label) > 63 or label[0] == 45 or label[-1] == 45:
            return False
    return len(d) <= DOMAIN_MAX


def _ipv4_ok(s):
    parts = s.split(b".")
    for p in parts:
        if not is_digits(p, 3) or int(p) > 255:
            return False
    return len(parts) == 4


def _ipv6_ok(s):
    """IPv6-full, IPv6-comp, IPv6v4-full, IPv6v4-comp (RFC 5321 §4.1.3)."""
    if s.count(b"::") > 1:
        return False
    if s.find(b".") >= 0:                     # trailing IPv4: check it, count it as two groups
        i = s.rfind(b":")
        if i < 0 or not _ipv4_ok(s[i + 1:]):
            return False
        s = s[:i + 1] + b"0:0"
    if s.find(b"::") >= 0:
        head, tail = s.split(b"::")
        groups = (head.split(b":") if head else []) + (tail.split(b":") if tail else [])
        if len(groups) > 6:                   # "::" stands for at least two groups
            return False
    else:
        groups = s.split(b":")
        if len(groups) != 8:
            return False
    for g in groups:
        if len(g) > 4 or not _all(g, _HEX):
            return False
    return True


def _literal_ok(lit):
    """``[1.2.3.4]`` or ``[IPv6:...]`` (general address literals are refused)."""
    if len(lit) < 3 or lit[-1] != 93:
        return False
    inner = lit[1:-1]
    return _ipv6_ok(inner[5:]) if inner[:5].lower() == b"ipv6:" else _ipv4_ok(inner)


def _quoted_ok(q):
    """Quoted-string content check; returns the unquoted bytes or None."""
    out = bytearray()
    i, n = 1, len(q) - 1
    while i < n:
        c = q[i]
        if c == 92:
            if i + 1 >= n or q[i + 1] < 32 or q[i + 1] > 126:
                return None
            out.append(q[i + 1])
            i += 2
        elif _QTEXT[c]:
            out.append(c)
            i += 1
        else:
            return None
    return bytes(out)


def _requote(content):
    """Least quoting (RFC 5321 §4.1.2 SHOULD): bare if a Dot-string, else quoted with escapes."""
    if _dot_string_ok(content):
        return content
    out = bytearray(b'"')
    for c in content:
        if c == 34 or c == 92:
            out.append(92)
        out.append(c)
    out.append(34)
    return bytes(out)


def parse_path(s, null_ok, postmaster_ok):
    """Parse ``<path>[ params]`` at the start of ``s``.

    Returns ``(address, rest, None)`` or ``(None, None, error_reply_text)``.  Source routes
    (``<@a,@b:u@d>``) are stripped; quoted local parts are reduced to the least quoting; the
    case of the local part is kept.  ``null_ok`` accepts ``<>`` (MAIL), ``postmaster_ok`` accepts a
    bare ``<postmaster>`` (RCPT).  ``rest`` is the parameter text after ``>``.
    """
    bad = R_BAD_SENDER if null_ok else R_BAD_RCPT
    if s[:1] != b"<":
        return None, None, bad
    i, n, inq = 1, len(s), False
    while i < n:                              # find the closing '>' outside quotes
        c = s[i]
        if inq:
            if c == 92:
                i += 1
            elif c == 34:
                inq = False
        elif c == 34:
            inq = True
        elif c == 62:
            break
        i += 1
    if i >= n:
        return None, None, bad
    inner, rest = s[1:i], s[i + 1:]
    if rest and rest[:1] != b" ":
        return None, None, bad
    for c in inner:
        if c > 126:
            return None, None, R_NON_ASCII
        if c < 32:
            return None, None, bad
    if not inner:
        return (b"", rest, None) if null_ok else (None, None, bad)
    if len(inner) + 2 > PATH_MAX:
        return None, None, R_PATH_LONG
    if inner[:1] == b"@":                     # A-d-l ":" Mailbox
        j = inner.find(b":")
        if j < 0:
            return None, None, bad
        for hop in inner[:j].split(b","):
            if hop[:1] != b"@" or not _domain_ok(hop[1:]):
                return None, None, bad
        inner = inner[j + 1:]
    if postmaster_ok and inner.lower() == b"postmaster":
        return inner, rest, None
    if inner[:1] == b'"':
        j, m = 1, len(inner)
        while j < m and inner[j] != 34:
            j += 2 if inner[j] == 92 else 1
        local, domain = inner[:j + 1], inner[j + 1:]
        content = _quoted_ok(local) if j < m else None
        if content is None:
            return None, None, bad
        local = _requote(content)
    else:
        j = inner.find(b"@")
        local, domain = (inner[:j], inner[j:]) if j >= 0 else (inner, b"")
        if not _dot_string_ok(local):
            return None, None, bad
    if domain[:1] != b"@" or len(local) > LOCAL_MAX:
        return None, None, bad
    domain = domain[1:]
    if domain[:1] == b"[":
        if not _literal_ok(domain):
            return None, None, bad
    elif not _domain_ok(domain):
        return None, None, bad
    return local + b"@" + domain, rest, None


def parse_params(rest):
    """ESMTP parameters ``KEY[=VALUE] ...`` -> (list of (KEY uppercased, value or None), None)
    or (None, error_reply_text).  A list, not a dict: order is kept on every runtime."""
    out = []
    for word in rest.split():
        j = word.find(b"=")
        key, value = (word[:j], word[j + 1:]) if j >= 0 else (word, None)
        if not _all(key, _LDH) or key[0] == 45 or (value is not None and not _all(value, _VALUE)):
            return None, R_SYNTAX
        key = key.upper()
        for k, _v in out:
            if k == key:
                return None, R_SYNTAX
        out.append((key, value))
    return out, None


def check_params(params, mail, max_size):
    """Error reply text for unacceptable parameters, or None.  MAIL: SIZE (RFC 1870), BODY
    (RFC 6152), AUTH (RFC 4954 §5, accepted and ignored); RCPT: none (no DSN offered)."""
    for key, value in params:
        if not mail or (key != b"SIZE" and key != b"BODY" and key != b"AUTH"):
            return R_PARAM
        if value is None or (key == b"SIZE" and not is_digits(value, 20)):
            return R_SYNTAX
        if key == b"SIZE" and max_size and int(value) > max_size:
            return R_TOO_BIG
        if key == b"BODY" and value.upper() != b"7BIT" and value.upper() != b"8BITMIME":
            return R_SYNTAX
    return None


def b64decode(s):
    """Strict RFC 4648 base64 (SASL responses); ``=`` alone is the empty response.
    Returns bytes, or None when the text is not valid base64."""
    if s == b"=":
        return b""
    pad = 2 if s.endswith(b"==") else (1 if s.endswith(b"=") else 0)
    if len(s) % 4 or not _all(s[:len(s) - pad], _B64):
        return None
    try:
        return binascii.a2b_base64(s)
    except Exception:              # binascii.Error on CPython, ValueError on MicroPython
        return None


class SaslExchange:
    """One AUTH exchange, server side (RFC 4954; PLAIN RFC 4616; LOGIN draft-murchison-sasl-login),
    sans-IO.  ``start(arg)`` takes the AUTH argument (mechanism [initial-response]), ``feed(line)``
    each later response line ("*" cancels).  Each returns a reply text: a 334 challenge (``step``,
    b"PLAIN" | b"USER" | b"PASS", names the response awaited), a refusal (the exchange is over), or
    None: ``mech``, ``user`` and ``secret`` are complete, for the caller to check."""

    def __init__(self):
        self.mech = self.user = self.secret = self.step = None

    def start(self, arg):
        words = arg.split()
        if not words or len(words) > 2:
            return R_SYNTAX
        mech = words[0].upper()
        if mech != b"PLAIN" and mech != b"LOGIN":
            return R_AUTH_MECH
        self.mech, self.step = mech, (b"PLAIN" if mech == b"PLAIN" else b"USER")
        if len(words) == 2:
            return self._response(words[1])     # an initial response "*" is bad base64, not a cancel
        return R_AUTH_EMPTY if self.step == b"PLAIN" else R_AUTH_USER

    def feed(self, line):
        return R_AUTH_CANCEL if line == b"*" else self._response(line)

    def _response(self, text):
        data = b64decode(text)
        if data is None:
            return R_AUTH_B64
        if self.step == b"USER":
            self.user, self.step = data, b"PASS"
            return R_AUTH_PASS
        if self.step == b"PLAIN":               # [authzid] NUL authcid NUL passwd
            parts = data.split(b"\0")
            if len(parts) != 3 or not parts[1] or (parts[0] and parts[0] != parts[1]):
                return R_AUTH_FAIL if len(parts) == 3 else R_AUTH_B64
            self.user, data = parts[1], parts[2]
        self.secret = data
        return None
