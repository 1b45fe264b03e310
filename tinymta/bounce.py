"""Delivery status notifications (bounces): RFC 3464 inside an RFC 6522 multipart/report.

    msg = build_dsn(reporting_host, original_sender, arrived, recipients,
                    original_headers, queue_id, now, delayed=False)   -> bytes
    should_bounce(sender)              -> bool: False for <> and MAILER-DAEMON@... (no loops)
    lim = BounceLimiter(max_per_window, window_s); lim.allow(now) -> bool

build_dsn returns a complete RFC 5322 message (CRLF line ends) to queue with MAIL FROM:<>
and RCPT TO:<original_sender>.  Arguments:
  reporting_host    str, our host name (MAILER-DAEMON@host, Reporting-MTA, Message-ID)
  original_sender   str or bytes, the original reverse-path; ValueError when should_bounce()
                    refuses it, and when `recipients` is empty
  arrived           unix time the message was accepted (Arrival-Date), or None to omit it
  recipients        list of (address, status, diagnostic, remote_mta[, original_recipient]):
                    status "5.1.1"-style (anything not 4.x.y/5.x.y becomes 5.0.0, or 4.0.0
                    when delayed); diagnostic bytes, str or None (the remote reply or a local
                    reason); remote_mta str or None; the optional ORCPT is a bare address or
                    "type;value", given as Original-Recipient
  original_headers  bytes, the original header section (part 3); b"" or None: no part 3
  queue_id          str or None; given, it appears as X-Queue-ID and in the text part
  now               unix time of Date and Last-Attempt-Date
  delayed           False: Action failed, Subject SUBJECT_FAILED; True: delayed, SUBJECT_DELAYED

Header safety (every value comes from outside, remote replies above all): each value becomes
one line of printable US-ASCII (CR, LF, TAB and other controls turn into spaces, runs of spaces
collapse), so nothing can inject a field or a boundary.  Non-ASCII is replaced, not encoded:
each UTF-8 character or stray 8-bit octet becomes "?" (RFC 6533 UTF-8 fields belong to
message/global-delivery-status, which needs SMTPUTF8 on every hop).  Values are cut to
VALUE_MAX characters ("..." marks the cut) and folded at spaces to 78 columns, so no line
passes 998 octets.  A diagnostic that starts like an SMTP reply ("550 ...") is typed "smtp",
any other (a local reason such as a DNS failure) "x-tinymta".
Part 3 (text/rfc822-headers) keeps the original octets, except that it stops at the first empty
line, line ends become CRLF (a bare CR inside a line a space), lines are cut to 998 octets and
the section ends after the last whole line within HEADERS_MAX.  8-bit octets are kept and the
part and message labelled Content-Transfer-Encoding: 8bit (the DSN then needs 8BITMIME, as the
original did).  The random boundary is checked against every part.

BounceLimiter is a token bucket: it starts full (max_per_window bounces) and regains one every
window_s / max_per_window seconds.  A clock that steps backwards adds nothing, and refilling
goes on from the new time.  `denied` counts refusals (for the log).  What to do with a refused
bounce (drop and log, or keep it for later) is the queue's decision.

This module must not know sockets, the spool, the queue, the clock (times are passed in) or
the SMTP client: values in, bytes out.  No email package (MicroPython has none).
"""
from tinymta import compat

HEADERS_MAX = 32768     # octets of the original header section kept in part 3
VALUE_MAX = 900         # characters of one header value (diagnostics, addresses)
_WIDTH = 78

SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"


def _ascii(value, limit=VALUE_MAX):
    """One line of printable US-ASCII (see the module docstring); "" for None."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = value.encode()
    value = bytes(value[:limit * 4 + 16])
    out = bytearray()
    prev = 32
    for c in value:
        if c >= 0x80:
            if c >= 0xC0 or prev < 0x80:    # a continuation octet adds no second "?"
                out.append(63)
        else:
            if c < 32 or c == 127:
                c = 32
            if c != 32 or (out and out[-1] != 32):
                out.append(c)
        prev = c
    s = bytes(out).strip().decode()
    if len(s) > limit:
        s = s[:limit - 3] + "..."
    return s


def _wrap(text, first, width):
    """Split at spaces: the first line up to `first` characters, the rest up to `width`
    (a word longer than that gets a line of its own)."""
    lines, cur, limit = [], "", first
    for w in text.split(" "):
        if cur and len(cur) + 1 + len(w) > limit:
            lines.append(cur)
            cur = w
            limit = width
        else:
            cur = cur + " " + w if cur else w
    lines.append(cur)
    return lines


def _field(name, value):
    """b"Name: value\\r\\n", folded at spaces; `value` must already be clean."""
    return (name + ": " + "\r\n ".join(_wrap(value, _WIDTH - len(name) - 2, _WIDTH - 1)) + "\r\n").encode()


def _status(status, delayed):
    s = _ascii(status, 16)
    p = s.split(".")
    if len(p) == 3 and p[0] in ("4", "5") and all(1 <= len(x) <= 3 and x.isdigit() for x in p[1:]):
        return s
    return "4.0.0" if delayed else "5.0.0"


def _is_reply(text):
    return len(text) >= 3 and text[0] in "245" and text[:3].isdigit() and (len(text) == 3 or text[3] in " -")


def _header_section(raw):
    """Part 3 octets (see the module docstring) and whether they hold 8-bit octets."""
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    out = bytearray()
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            end = len(raw)
        line = raw[pos:end]
        pos = end + 1
        line = (line[:-1] if line.endswith(b"\r") else line).replace(b"\r", b" ")[:998]
        if not line:
            break
        if len(out) + len(line) + 2 > HEADERS_MAX:
            break
        out.extend(line + b"\r\n")
    return bytes(out), any(c >= 0x80 for c in out)


def should_bounce(sender):
    """False for the null sender (<>, "" or None) and for MAILER-DAEMON@any (a bounce of a
    bounce would loop); True otherwise."""
    if sender is None:
        return False
    s = _ascii(sender)
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1].strip()
    if not s:
        return False
    at = s.rfind("@")
    local = s[:at] if at >= 0 else s
    return local.strip('"').lower() != "mailer-daemon"


def build_dsn(reporting_host, original_sender, arrived, recipients, original_headers, queue_id,
              now, delayed=False):
    """The DSN as bytes, CRLF line ends (arguments and safety rules: the module docstring)."""
    if not should_bounce(original_sender):
        raise ValueError("no DSN to a null or MAILER-DAEMON sender")
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    host = _ascii(reporting_host, 255).replace(" ", "")
    sender = _ascii(original_sender)
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    qid = _ascii(queue_id, 64) if queue_id is not None else ""
    action = "delayed" if delayed else "failed"
    date = compat.rfc5322_date(now)
    hdrs, eight = _header_section(original_headers or b"")

    text = ["This is the mail delivery system at " + host + ".", ""]
    text += (["Your message has not yet been delivered to the recipients below.",
              "Delivery will be retried; you do not need to send it again."] if delayed else
             ["Your message could not be delivered to the recipients below.", "Delivery will not be retried."])
    if qid:
        text.append("Queue ID: " + qid)
    if hdrs:
        text.append("The original header section is attached.")
    text.append("")
    report = bytearray(_field("Reporting-MTA", "dns; " + host))
    if qid:
        report.extend(_field("X-Queue-ID", qid))
    if arrived is not None:
        report.extend(_field("Arrival-Date", compat.rfc5322_date(arrived)))
    for r in recipients:
        addr = _ascii(r[0])
        status = _status(r[1], delayed)
        diag = _ascii(r[2])
        mta = _ascii(r[3], 255).replace(" ", "") if r[3] else ""
        orcpt = _ascii(r[4]) if len(r) > 4 and r[4] else ""
        if orcpt and ";" not in orcpt:
            orcpt = "rfc822; " + orcpt
        report.extend(b"\r\n")
        report.extend(_field("Final-Recipient", "rfc822; " + addr))
        if orcpt:
            report.extend(_field("Original-Recipient", orcpt))
        report.extend(_field("Action", action))
        report.extend(_field("Status", status))
        if mta:
            report.extend(_field("Remote-MTA", "dns; " + mta))
        if diag:
            report.extend(_field("Diagnostic-Code", ("smtp; " if _is_reply(diag) else "x-tinymta; ") + diag))
        report.extend(_field("Last-Attempt-Date", date))
        text.append("<" + addr + ">: status " + status)
        if diag:
            said = ("host " + mta + " said: " if mta else "reason: ") + diag
            for line in _wrap(said, _WIDTH - 4, _WIDTH - 4):
                text.append("    " + line)

    cte = b"Content-Transfer-Encoding: 8bit\r\n" if eight else b""
    parts = [("Notification", "text/plain; charset=us-ascii", ("\r\n".join(text) + "\r\n").encode(), b""),
             ("Delivery report", "message/delivery-status", bytes(report), b"")]
    if hdrs:
        parts.append(("Undelivered message headers", "text/rfc822-headers", hdrs, cte))
    b = b""
    while not b or any(b in p[2] for p in parts):
        b = b"=_%08x%08x.%d" % (compat.random_u32(), compat.random_u32(), int(now))

    out = bytearray()
    out.extend(_field("From", "Mail Delivery System <MAILER-DAEMON@" + host + ">"))
    out.extend(_field("To", "<" + sender + ">"))
    out.extend(_field("Subject", SUBJECT_DELAYED if delayed else SUBJECT_FAILED))
    out.extend(_field("Date", date))
    out.extend(_field("Message-ID", "<%d.%08x@%s>" % (int(now), compat.random_u32(), host)))
    out.extend(b"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n")
    out.extend(b"Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"" + b + b"\"\r\n")
    out.extend(cte + b"\r\nThis is a MIME-encapsulated delivery status notification.\r\n")
    for desc, ctype, content, enc in parts:
        out.extend(b"\r\n--" + b)
        out.extend(("\r\nContent-Description: %s\r\nContent-Type: %s\r\n" % (desc, ctype)).encode())
        out.extend(enc + b"\r\n")
        out.extend(content)
    out.extend(b"\r\n--" + b + b"--\r\n")
    return bytes(out)


class BounceLimiter:
    """Token bucket: at most max_per_window bounces at once, refilled at max_per_window per
    window_s seconds.  Integer arithmetic (board floats are single precision): credit is kept
    in units of 1/window_s of a bounce."""

    def __init__(self, max_per_window, window_s):
        if max_per_window < 0 or window_s <= 0:
            raise ValueError("BounceLimiter needs max_per_window >= 0 and window_s > 0")
        self.max = max_per_window
        self.window = window_s
        self.credit = max_per_window * window_s
        self.last = None
        self.denied = 0

    def allow(self, now):
        """True (and one bounce spent) when a bounce may be sent at time `now` (seconds)."""
        if self.last is not None and now > self.last:
            self.credit = min(self.max * self.window, self.credit + (now - self.last) * self.max)
        self.last = now
        if self.max and self.credit >= self.window:
            self.credit -= self.window
            return True
        self.denied += 1
        return False
