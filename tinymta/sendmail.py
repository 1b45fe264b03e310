"""`tinymta sendmail`: the sendmail(1) command line as cron, smartd, mdadm, fail2ban and
unattended-upgrades call it (CPython only).

Holds the sendmail-style argument parsing (getopt-like: `-t -i -oi -f FROM -fFROM -F NAME`,
harmless `-odi -oem -bm -v` ...), the small header work a submission client must do (recipients
from To/Cc/Bcc with -t, Bcc removed, a From added or qualified with `@server.hostname`, bare LF
turned into CRLF) and the hand-over to the local tinymta over SMTP with smtplib (which does the
dot-stuffing).  The message is read from standard input to EOF: a line with a single dot never
ends it (-i is always in force).

Exit statuses are sysexits(3): 0 handed over, 64 EX_USAGE (unknown flag, no recipients),
69 EX_UNAVAILABLE (5xx, or some recipients refused), 75 EX_TEMPFAIL (MTA down, 4xx, timeout,
connection lost: the caller keeps the mail), 78 EX_CONFIG (config file unreadable).  Every error
is one line `tinymta: ...` on stderr.

It must not know the spool, the server internals or relaying: it is an SMTP client of the
running tinymta, finding it only through `server.listen` and `server.hostname` of the config.
"""
import getpass
import re
import smtplib
import socket
import sys
from email.utils import getaddresses

EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL, EX_CONFIG = 0, 64, 69, 75, 78
TIMEOUT = 120  # seconds for connecting and for each reply (the final dot waits for a sync)

_FLAGS = "tivnmUGAS"       # no argument; -t matters, -i is always true, -v sets debug, rest ignored
_WITH_ARG = "fFrcCoBNRVhXLOeqb"  # an argument, attached (-fFROM) or the next word (-f FROM)
_MODES = ("m", "")         # -bm (deliver mail, the default); other -b modes are refused


class UsageError(Exception):
    """Bad command line: exit 64."""


class Options:
    def __init__(self):
        self.read_recipients = False   # -t
        self.sender = None             # -f / -r
        self.full_name = None          # -F
        self.config = None             # -c / -C
        self.verbose = False           # -v
        self.recipients = []


def parse_args(argv):
    """sendmail's argv (after `sendmail`) -> Options, or UsageError."""
    o = Options()
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            o.recipients.extend(argv[i:])
            break
        if not a.startswith("-") or a == "-":
            o.recipients.append(a)
            continue
        j = 1
        while j < len(a):
            c = a[j]
            j += 1
            if c in _FLAGS:
                if c == "t":
                    o.read_recipients = True
                elif c == "v":
                    o.verbose = True
                continue
            if c not in _WITH_ARG:
                raise UsageError("sendmail: unknown option -%s" % c)
            if j < len(a):
                val = a[j:]
            elif i < len(argv):
                val, i = argv[i], i + 1
            else:
                raise UsageError("sendmail: option -%s needs an argument" % c)
            if c in "fr":
                o.sender = val
            elif c == "F":
                o.full_name = val
            elif c in "cC":
                o.config = val
            elif c == "b" and val not in _MODES:
                raise UsageError("sendmail: mode -b%s is not supported (only -bm)" % val)
            # -o options (-oi, -oem, -odi, -oeq ...), -B, -N, -R, -V, -h, -X ...: harmless, ignored
            break
    return o


# ---- the message ---------------------------------------------------------------------------------

_HEADER = re.compile(rb"^[!-9;-~]+[ \t]*:")


def normalize(raw):
    """Bare LF -> CRLF (existing CRLF kept); the result ends with CRLF unless empty."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def split_header(data):
    """CRLF message -> ([header fields, each a list of its CRLF-less lines], body bytes)."""
    lines = data.split(b"\r\n")
    fields, n = [], 0
    while n < len(lines) - 1:   # the last element is what follows the final CRLF ("")
        line = lines[n]
        if line == b"":
            n += 1  # the separator belongs to neither side; join_message puts it back
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _HEADER.match(line):
            fields.append([line])
        else:
            break   # not a header line: the body starts here (no blank line before it)
        n += 1
    else:
        return fields, b""
    return fields, b"\r\n".join(lines[n:])


def join_message(fields, body):
    head = b"".join(b"\r\n".join(f) + b"\r\n" for f in fields)
    return head + b"\r\n" + body


def _name(field):
    return field[0].split(b":", 1)[0].strip().lower()


def _value(field):
    text = b" ".join([field[0].split(b":", 1)[1]] + [ln.strip() for ln in field[1:]])
    return text.decode("utf-8", "replace").strip()


def qualify(addr, hostname):
    return addr if "@" in addr or not addr else "%s@%s" % (addr, hostname)


def _qualify_from(field, hostname):
    """A From field whose addresses lack a domain, with `@hostname` added (cron: `root (Cron Daemon)`)."""
    value = _value(field)
    bare = [a for _, a in getaddresses([value]) if a and "@" not in a]
    if not bare:
        return field
    for local in bare:
        full = local + "@" + hostname
        if "<%s>" % local in value:
            value = value.replace("<%s>" % local, "<%s>" % full, 1)
        else:
            value = re.sub(r'(?<![\w.@"!#$%%&\'*+/=?^`{|}~-])%s(?![\w.@!#$%%&\'*+/=?^`{|}~-])'
                           % re.escape(local), lambda m: full, value, count=1)
    return [field[0].split(b":", 1)[0] + b": " + value.encode("utf-8")]


def prepare(raw, opts, hostname, login):
    """(envelope sender, [recipients], CRLF message bytes) or UsageError when there are none."""
    fields, body = split_header(normalize(raw))
    recipients = [qualify(r.strip(), hostname) for arg in opts.recipients
                  for _, r in getaddresses([arg]) if r.strip()]
    if opts.read_recipients:
        values = [_value(f) for f in fields if _name(f) in (b"to", b"cc", b"bcc")]
        recipients += [qualify(a, hostname) for _, a in getaddresses(values) if a]
        fields = [f for f in fields if _name(f) != b"bcc"]
    seen, rcpts = set(), []
    for r in recipients:
        if r.lower() not in seen:
            seen.add(r.lower())
            rcpts.append(r)
    if not rcpts:
        raise UsageError("sendmail: no recipients (give them as arguments, or -t to read To/Cc/Bcc)")
    if opts.sender is None:
        sender = qualify(login, hostname)
    else:
        sender = opts.sender.strip()
        if sender.startswith("<") and sender.endswith(">"):
            sender = sender[1:-1]
        sender = qualify(sender, hostname)
    froms = [k for k, f in enumerate(fields) if _name(f) == b"from"]
    if froms:
        for k in froms:
            fields[k] = _qualify_from(fields[k], hostname)
    else:
        addr = sender or "MAILER-DAEMON@" + hostname
        if opts.full_name:
            name = opts.full_name.replace("\\", "\\\\").replace('"', '\\"')
            line = '"%s" <%s>' % (name, addr)
        else:
            line = addr
        fields.append([b"From: " + line.encode("utf-8")])
    return sender, rcpts, join_message(fields, body)


# ---- the hand-over -------------------------------------------------------------------------------

def _one_line(s):
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    return " ".join(str(s).split())


def _client_host(host):
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _status(code):
    return EX_TEMPFAIL if 400 <= code < 500 or code < 0 else EX_UNAVAILABLE


def deliver(host, port, sender, rcpts, message, verbose=False, timeout=TIMEOUT):
    """Hand the message over; (exit status, error line or None)."""
    try:
        smtp = smtplib.SMTP(timeout=timeout, local_hostname="localhost")  # no DNS for our name
        if verbose:
            smtp.set_debuglevel(1)
        try:
            smtp.connect(_client_host(host), port)
            smtp.ehlo_or_helo_if_needed()
            opts = []
            if smtp.does_esmtp and smtp.has_extn("8bitmime") and any(b > 127 for b in message):
                opts.append("BODY=8BITMIME")
            refused = smtp.sendmail(sender, rcpts, message, mail_options=opts)
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
        finally:
            smtp.close()
    except smtplib.SMTPRecipientsRefused as e:
        codes = [c for c, _ in e.recipients.values()]
        first = sorted(e.recipients.items())[0]
        st = EX_TEMPFAIL if all(400 <= c < 500 for c in codes) else EX_UNAVAILABLE
        return st, "recipients refused: %s: %d %s" % (first[0], first[1][0], _one_line(first[1][1]))
    except smtplib.SMTPSenderRefused as e:
        return _status(e.smtp_code), "sender <%s> refused: %d %s" % (e.sender, e.smtp_code, _one_line(e.smtp_error))
    except smtplib.SMTPResponseException as e:  # SMTPDataError, SMTPConnectError, HELO errors
        return _status(e.smtp_code), "message not accepted: %d %s" % (e.smtp_code, _one_line(e.smtp_error))
    except smtplib.SMTPServerDisconnected as e:
        return EX_TEMPFAIL, "connection to %s port %d lost: %s" % (host, port, _one_line(e) or "closed")
    except socket.timeout:
        return EX_TEMPFAIL, "timeout talking to %s port %d" % (host, port)
    except (smtplib.SMTPException, OSError) as e:
        text = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
        return EX_TEMPFAIL, "cannot hand the mail to %s port %d: %s" % (host, port, text)
    if refused:
        bad = ", ".join("%s (%d)" % (r, c) for r, (c, _) in sorted(refused.items()))
        return EX_UNAVAILABLE, "sent to the other recipients; refused: %s" % bad
    return EX_OK, None


def _login():
    try:
        return getpass.getuser()
    except Exception:
        return "root"


def main(argv, stdin=None, stderr=None):
    """`tinymta sendmail ARGS...`; returns the exit status."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stderr = stderr if stderr is not None else sys.stderr

    def fail(status, msg):
        stderr.write("tinymta: %s\n" % msg)
        stderr.flush()
        return status

    try:
        opts = parse_args(argv)
    except UsageError as e:
        return fail(EX_USAGE, e)
    from tinymta import config
    try:
        cfg = config.load(opts.config)
    except config.ConfigError as e:
        return fail(EX_CONFIG, _one_line(e))
    if not opts.recipients and not opts.read_recipients:
        return fail(EX_USAGE, "sendmail: no recipients (give them as arguments, or -t to read To/Cc/Bcc)")
    try:
        raw = stdin.read()
    except OSError as e:
        return fail(EX_TEMPFAIL, "cannot read the message: %s" % (e.strerror or e))
    hostname = cfg.server.hostname
    try:
        sender, rcpts, message = prepare(raw, opts, hostname, _login())
    except UsageError as e:
        return fail(EX_USAGE, e)
    host, port = cfg.server.listen[0]
    status, err = deliver(host, port, sender, rcpts, message, verbose=opts.verbose)
    if err:
        return fail(status, err)
    return status
