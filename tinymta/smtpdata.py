"""Client input framing for the server session: command lines (take_line) and, after the 354,
the DATA content (DataReader).  Sans-IO.

It holds how client bytes are cut into lines and messages: command-line framing (CRLF only, the
length limits by verb, bare CR/LF never run as a command; RFC 5321 §2.3.8, §4.5.3.1), and the
DATA reader (RFC 5321 §4.1.1.4, §4.5.2; protocol.md §1.12): content-line framing (CRLF, bare CR,
bare LF), the end-of-data rule (only a raw CRLF.CRLF ends DATA: the SMTP-smuggling defence,
invariant 5), dot transparency, the size, line-length and Received-hop limits, and cutting the
unstuffed body into CHUNK-sized ("body", chunk) events, so memory stays bounded (invariant 2).

It must not know sockets, clocks, files, the spool, relay policy, what a command means, the
session's state or the envelope: the session hands it its input buffer and reads the results.
Reply texts and the path grammar live in smtpproto.  MicroPython-clean: no ``re``, no recursion,
no keyword arguments to builtin methods.
"""
from tinymta.smtpproto import CRLF, R_BARE_DATA, R_HOPS, R_LONG_LINE, R_TOO_BIG

# Limits (RFC 5321 §4.5.3.1): command line 512 octets incl. CRLF, +26 for SIZE= and +500 for
# AUTH= on MAIL (RFC 1870 §3, RFC 4954 §5); SASL lines up to 12288 octets (RFC 4954 §4).
CMD_LIMIT = 512
MAIL_LIMIT = 512 + 26 + 500
AUTH_LIMIT = 12288
TEXT_LINE_MAX = 998          # body line, excluding CRLF (RFC 5321 §4.5.3.1.6, RFC 5322 §2.1.1)
TOO_LONG, BARE = -1, -2      # take_line results besides a line and None


def take_line(buf, discard, sasl):
    """Cut the next command line (or SASL response line, ``sasl`` true) off the front of the
    bytearray ``buf``.  Returns ``(line, discard)``: the line without CRLF, None (need bytes),
    TOO_LONG or BARE; ``discard`` is True while the rest of an over-long line is still to be
    dropped: pass it back in.  Any LF ends a line, but the line is good only if that LF follows a
    CR and no other CR is inside (RFC 5321 §2.3.8, F1): a bare-LF line gets one error reply, and
    is never run as a command."""
    if discard:
        i = buf.find(b"\n")
        buf[:(len(buf) if i < 0 else i + 1)] = b""
        if i < 0:
            return None, True
    verb = bytes(buf[:5]).upper()               # the limit depends on the verb (L1)
    limit = MAIL_LIMIT if verb == b"MAIL " else CMD_LIMIT
    if sasl or verb == b"AUTH ":
        limit = AUTH_LIMIT
    i = buf.find(b"\n")
    if i < 0 and len(buf) < limit:
        return None, False
    if i < 0 or i + 1 > limit:          # over the limit: one 500, then drop through the LF
        buf[:(len(buf) if i < 0 else i + 1)] = b""
        return TOO_LONG, i < 0
    line = bytes(buf[:i + 1])
    buf[:i + 1] = b""
    if i == 0 or line[i - 1] != 13 or line.find(b"\r") < i - 1:
        return BARE, False
    return line[:-2], False


WINDOW = 1024      # body octets examined per step: more than a legal 1000-octet text line
CHUNK = 4096       # ("body", chunk) size; only the last chunk of a message is shorter


class DataReader:
    """DATA content after the 354 (RFC 5321 §4.1.1.4, §4.5.2; protocol.md §1.12), sans-IO.

    ``step(buf, p)`` handles one line of ``buf`` from offset ``p`` (or a WINDOW piece of a longer
    line) and returns the offset after it, or -1 when the next byte must be seen first.  A line ends
    at CRLF, a bare LF or a bare CR; only CRLF is real.  DATA ends at the first raw CRLF.CRLF whose
    first CRLF ends the DATA command or a line (SM1): nothing else, in either bare_newlines mode, so
    no bare-CR/LF variant can end it early.  Decisions use whole lines or full windows, so any
    split of the input yields the same events.  It appends ("body", chunk) and ("data_abort",)
    to ``events``; after ``done``, ``refusal`` is None (all body chunks appended) or the reply.
    ``size`` counts stored octets (unstuffed, CRLF lines), ``received`` the Received: fields of
    the header section, ``header_bytes`` its length with the empty line (None if none).
    """

    def __init__(self, events, max_size, max_received, normalize):
        self.events, self.max_size, self.max_received = events, max_size, max_received
        self.normalize = normalize              # bare CR/LF -> CRLF; else the message is refused
        self.done, self.refusal, self.header_bytes = False, None, None
        self.size = self.received = self._linelen = 0
        self._bol = self._prev_crlf = self._in_headers = True
        self._out = bytearray()

    def step(self, buf, p):
        n = len(buf) - p
        w = p + (WINDOW if n > WINDOW else n)
        lf = buf.find(b"\n", p, w)
        cr = buf.find(b"\r", p, lf if lf >= 0 else w)
        if cr >= 0:
            if cr + 1 >= len(buf):
                return -1                       # CRLF or a bare CR?  wait for the next byte
            real = buf[cr + 1] == 10
            end, term = cr, (2 if real else 1)
        elif lf >= 0:
            end, term, real = lf, 1, False
        elif n >= WINDOW:
            end, term, real = w, 0, False
        else:
            return -1
        content = bytes(buf[p:end])
        if self._bol and term == 2 and self._prev_crlf and content == b".":
            self.done = True
            if self.refusal is None and self._out:
                self.events.append(("body", bytes(self._out)))
            self._out = bytearray()
        else:
            self._line(content, term, real)
        return end + term

    def _line(self, content, term, real):
        if self._bol:
            self._linelen = 0
            if content[:1] == b".":
                content = content[1:]           # transparency: drop the stuffed dot
            if self._in_headers:
                if term and not content:
                    self._in_headers = False
                    self.header_bytes = self.size + 2
                elif content[:9].lower() == b"received:":
                    self.received += 1
                    if self.received > self.max_received:
                        self._refuse(R_HOPS)
        self._linelen += len(content)
        if self._linelen > TEXT_LINE_MAX:
            self._refuse(R_LONG_LINE)
        if term and not real and not self.normalize:
            self._refuse(R_BARE_DATA)
        self._bol = term != 0
        if term:
            self._prev_crlf = real
            content += CRLF
        if self.refusal is not None:
            return
        self.size += len(content)
        if self.max_size and self.size > self.max_size:
            return self._refuse(R_TOO_BIG)
        out = self._out
        out += content
        while len(out) >= CHUNK:
            self.events.append(("body", bytes(out[:CHUNK])))
            out[:CHUNK] = b""

    def _refuse(self, text):
        if self.refusal is None:
            self.refusal = text
            self._out = bytearray()
            self.events.append(("data_abort",))
