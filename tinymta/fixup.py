"""Submission fix-ups for a message streaming in: the Received line, and Date, Message-ID and From
when a sensor left them out (big providers reject mail without them; RFC 6409 §8 lets a
submission server add them).

    fx = HeaderFixer(received_line, sender, hostname, queue_id, now)
    out = fx.feed(chunk)        bytes to store now (b"" while the header section is buffered)
    out = fx.finish()           what is left at the end of the message

Only the header section is held in RAM, and at most `limit` bytes of it: a longer one is passed
on unchanged apart from the Received line.  Existing header fields are never changed or
reordered; missing ones go at the end of the header section.  A message with no header section
(a sensor that sends bare text) gets the added fields and the empty line that separates them.

This module must not know sockets, the spool or the SMTP session: bytes in, bytes out.
"""
from tinymta import compat

_NEEDED = ((b"date", 0), (b"message-id", 1), (b"from", 2))


def _field_name(line):
    """The lower-cased field name of a header line, or None when it is not one (RFC 5322 §2.2)."""
    colon = line.find(b":")
    if colon <= 0:
        return None
    for c in line[:colon]:
        if c < 33 or c > 126:
            return None
    return bytes(line[:colon]).lower()


class HeaderFixer:
    def __init__(self, received, sender, hostname, queue_id, now, limit=32768):
        self.received = received
        self.sender = sender
        self.hostname = hostname
        self.queue_id = queue_id
        self.now = now
        self.limit = limit
        self.buf = bytearray()
        self.scanned = 0            # bytes of buf already classified as header lines
        self.seen = [False, False, False]
        self.done = False
        self.added = []             # names of the fields added (for the log)

    def _missing(self):
        out = bytearray()
        if not self.seen[0]:
            out.extend(b"Date: " + compat.rfc5322_date(self.now).encode() + b"\r\n")
            self.added.append("Date")
        if not self.seen[1]:
            out.extend(b"Message-ID: <%s.%08x@%s>\r\n" % (self.queue_id.encode(), compat.random_u32(),
                                                         self.hostname.encode()))
            self.added.append("Message-ID")
        if not self.seen[2]:
            frm = self.sender if self.sender else "MAILER-DAEMON@" + self.hostname
            out.extend(b"From: <" + frm.encode() + b">\r\n")
            self.added.append("From")
        return bytes(out)

    def _release(self, end, separator):
        """Emit trace + headers up to end + missing fields (+ separator) + the rest; pass through after."""
        out = bytearray(self.received)
        out.extend(self.buf[:end])
        out.extend(self._missing())
        out.extend(separator)
        out.extend(self.buf[end:])
        self.buf = bytearray()
        self.done = True
        return bytes(out)

    def feed(self, chunk):
        if self.done:
            return chunk
        self.buf.extend(chunk)
        while True:
            nl = self.buf.find(b"\r\n", self.scanned)
            if nl < 0:
                break
            line = self.buf[self.scanned:nl]
            if not line:                                    # the empty line ends the headers
                return self._release(self.scanned, b"")
            if line[0] in (32, 9):                          # folded continuation
                if self.scanned == 0:
                    return self._release(0, b"\r\n")
            else:
                name = _field_name(line)
                if name is None:                            # body text with no header section
                    return self._release(self.scanned, b"\r\n")
                for n, i in _NEEDED:
                    if name == n:
                        self.seen[i] = True
            self.scanned = nl + 2
        if len(self.buf) > self.limit:                      # too long to hold: pass it on as is
            self.seen = [True, True, True]
            return self._release(len(self.buf), b"")
        return b""

    def finish(self):
        if self.done:
            return b""
        return self._release(self.scanned, b"")
