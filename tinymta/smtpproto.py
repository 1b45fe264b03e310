"""SMTP grammar helpers shared by the server session: reply texts, paths, ESMTP parameters, SASL base64.

Everything here is a pure function over ``bytes`` (RFC 5321 §4.1.2 grammar, RFC 1870/6152/4954
parameters, RFC 4648 base64).  It holds no state and knows nothing of sockets, clocks, files,
the spool or relay policy; it is MicroPython-clean (no ``re``, no recursion, no keyword arguments
to builtin methods, no ``int in bytearray``: byte classes are 256-entry lookup tables).
"""
import binascii

CRLF = b"\r\n"

# Limits (RFC 5321 §4.5.3.1): command line 512 octets incl. CRLF, +26 for SIZE= and +500 for
# AUTH= on MAIL (RFC 1870 §3, RFC 4954 §5); SASL lines up to 12288 octets (RFC 4954 §4).
CMD_LIMIT = 512
MAIL_LIMIT = 512 + 26 + 500
AUTH_LIMIT = 12288
LOCAL_MAX = 64
DOMAIN_MAX = 255
PATH_MAX = 256
TEXT_LINE_MAX = 998          # body line, excluding CRLF (RFC 5321 §4.5.3.1.6, RFC 5322 §2.1.1)

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
R_NO_ARGS = b"501 5.5.4 Syntax error: no parameters allowed"
R_EHLO_SYNTAX = b"501 5.5.4 Syntax: EHLO hostname"
R_HELO_SYNTAX = b"501 5.5.4 Syntax: HELO hostname"
R_MAIL_SYNTAX = b"501 5.5.4 Syntax: MAIL FROM:<address>"
R_RCPT_SYNTAX = b"501 5.5.4 Syntax: RCPT TO:<address>"
R_VRFY_SYNTAX = b"501 5.5.4 Syntax: VRFY address"
R_AUTH_SYNTAX = b"501 5.5.4 Syntax: AUTH mechanism [initial-response]"
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
_KEYWORD = _LDH
_ATEXT = _table(_ALNUM + b"!#$%&'*+-/=?^_`{|}~")
_B64 = _table(_ALNUM + b"+/")
_QTEXT = _table(bytes(c for c in range(32, 127) if c != 34 and c != 92))   # qtextSMTP
_VALUE = _table(bytes(c for c in range(33, 127) if c != 61))               # esmtp-value
_CTL = _table(bytes(c for c in range(0, 32) if c != 9) + b"\x7f")           # controls but TAB


def reply(text):
    """One reply line as wire bytes: ``text`` (no CRLF) plus CRLF."""
    return bytes(text) + CRLF


def multiline(code, lines):
    """``code`` (b"250") and a list of texts -> ``250-a\\r\\n250-b\\r\\n250 c\\r\\n``."""
    out = []
    last = len(lines) - 1
    for i in range(len(lines)):
        out.append(code + (b" " if i == last else b"-") + lines[i] + CRLF)
    return b"".join(out)


def check_reply(text, allowed):
    """Validate a caller-supplied reply; return it without CRLF or raise ValueError.

    ``allowed`` lists acceptable first digits (b"45" for refusals).  One line, three digits,
    at most 510 octets, no CR/LF/NUL inside: a caller cannot corrupt the reply stream.
    """
    if isinstance(text, str):
        text = text.encode()
    text = bytes(text)
    if text.endswith(CRLF):
        text = text[:-2]
    if len(text) < 3 or len(text) > 510 or allowed.find(text[:1]) < 0:
        raise ValueError("bad SMTP reply %r" % (text,))
    if not (_DIGIT[text[0]] and _DIGIT[text[1]] and _DIGIT[text[2]]) or \
            (len(text) > 3 and text[3:4] != b" "):
        raise ValueError("bad SMTP reply %r" % (text,))
    for c in text:
        if _CTL[c]:
            raise ValueError("control character in SMTP reply")
    return text


def has_ctl(line):
    """True if ``line`` holds a control character other than TAB (NUL, DEL, ...)."""
    for c in line:
        if _CTL[c]:
            return True
    return False


def is_printable_ascii(s):
    """Non-empty, only octets 33..126 and single spaces between words (EHLO/HELO argument)."""
    if not s:
        return False
    for c in s:
        if c < 32 or c > 126:
            return False
    return True


def _dot_string_ok(s):
    """Dot-string = Atom *("." Atom) (RFC 5321 §4.1.2)."""
    if not s or s[0] == 46 or s[-1] == 46:
        return False
    prev_dot = False
    for c in s:
        if c == 46:
            if prev_dot:
                return False
            prev_dot = True
        elif _ATEXT[c]:
            prev_dot = False
        else:
            return False
    return True


def _domain_ok(d):
    """Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]."""
    if not d or len(d) > DOMAIN_MAX:
        return False
    for label in d.split(b"."):
        if not label or len(label) > 63 or label[0] == 45 or label[-1] == 45:
            return False
        for c in label:
            if not _LDH[c]:
                return False
    return True


def _ipv4_ok(s):
    parts = s.split(b".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3:
            return False
        for c in p:
            if not _DIGIT[c]:
                return False
        if int(p) > 255:
            return False
    return True


def _ipv6_ok(s):
    if s.count(b"::") > 1:
        return False
    ngroups = 8
    if s.find(b".") >= 0:                     # IPv6v4-full / IPv6v4-comp
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
        if len(groups) != ngroups:
            return False
    for g in groups:
        if not g or len(g) > 4:
            return False
        for c in g:
            if not _HEX[c]:
                return False
    return True


def _literal_ok(lit):
    """``[1.2.3.4]`` or ``[IPv6:...]`` (general address literals are refused)."""
    if len(lit) < 3 or lit[-1] != 93:
        return False
    inner = lit[1:-1]
    if inner[:5].lower() == b"ipv6:":
        return _ipv6_ok(inner[5:])
    return _ipv4_ok(inner)


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
        if not key or not (_ALNUM.find(key[:1]) >= 0):
            return None, R_SYNTAX
        for c in key:
            if not _KEYWORD[c]:
                return None, R_SYNTAX
        if value is not None:
            if not value:
                return None, R_SYNTAX
            for c in value:
                if not _VALUE[c]:
                    return None, R_SYNTAX
        key = key.upper()
        for k, _v in out:
            if k == key:
                return None, R_SYNTAX
        out.append((key, value))
    return out, None


def is_digits(s, maxlen):
    if not s or len(s) > maxlen:
        return False
    for c in s:
        if not _DIGIT[c]:
            return False
    return True


def b64decode(s):
    """Strict RFC 4648 base64 (SASL responses); ``=`` alone is the empty response.
    Returns bytes, or None when the text is not valid base64."""
    if s == b"=":
        return b""
    n = len(s)
    if n == 0 or n % 4:
        return None
    pad = 2 if s.endswith(b"==") else (1 if s.endswith(b"=") else 0)
    for c in s[:n - pad]:
        if not _B64[c]:
            return None
    try:
        return binascii.a2b_base64(s)
    except Exception:              # binascii.Error on CPython, ValueError on MicroPython
        return None
