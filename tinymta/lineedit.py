"""Line editing for the console's terminal transports (serial, standard input): sans-IO.

    ed = LineEditor(echo=True, limit=512)
    for kind, text in ed.feed(data):      # bytes as they came off the wire
        ...                               # kind: "line", "cancel", "eof", "toolong"
    port.write(ed.take_output())          # what the terminal must be shown (echo, erasures)

Theory of operation.  A person at picocom, minicom, screen or miniterm types bytes; those
programs send them raw and show whatever comes back, so the device echoes.  The editor keeps
one line in a bytearray and answers each byte from a small table:

    printable, UTF-8 bytes   append (if under the limit) and echo; past the limit: BEL, and
                             the line is refused when it ends ("toolong"), never cut short
                             (not even when erased back under the limit: bytes were lost)
    BS (0x08), DEL (0x7f)    drop the last character (a whole UTF-8 sequence) and echo "\\b \\b"
    CR, LF, CR LF, LF CR     end the line ("line"); the second byte of a pair is swallowed so
                             one Enter is one line whatever the terminal sends
    Ctrl-C (0x03)            drop the line, echo "^C" ("cancel")
    Ctrl-U (0x15)            erase the line on screen and in the buffer
    Ctrl-D (0x04)            on an empty line: "eof" (the transport decides what it means)
    ESC [ ... final          a terminal's key sequence (arrows, F-keys): swallowed whole; a
                             control byte inside one ends it and is handled as usual
    TAB                      a space
    any other control byte   ignored (binary garbage never reaches the interpreter)

With `secret` set (a password being typed) characters are stored but echoed as nothing.
The editor never raises on input and never grows past `limit` bytes.  It must not know the
commands, the transports or the MTA.
"""

from tinymta.compat import decode_utf8_replace

CR, LF, BS, DEL, ETX, EOT, NAK, ESC, TAB, BEL = 13, 10, 8, 127, 3, 4, 21, 27, 9, 7
_ERASE = b"\b \b"


class LineEditor:
    def __init__(self, echo=True, limit=512):
        self.echo = echo
        self.limit = limit
        self.secret = False
        self.buf = bytearray()
        self.out = bytearray()
        self._overflow = False
        self._last_end = 0      # CR or LF that ended the previous line: its pair partner is swallowed
        self._esc = 0           # 0: normal, 1: after ESC, 2: inside ESC [ ... (CSI)

    def reset(self):
        """Forget the line being typed and any half-read key sequence (a new person)."""
        self.buf = bytearray()
        self._overflow = False
        self._esc = self._last_end = 0
        self.secret = False

    def take_output(self):
        """The bytes to show the person since the last call."""
        out = bytes(self.out)
        self.out = bytearray()
        return out

    def _show(self, data):
        if self.echo:
            self.out.extend(data)

    def _erase_line(self):
        if not self.secret:
            n = 0
            for b in self.buf:      # one erasure per character on screen, not per UTF-8 byte
                if b & 0xC0 != 0x80:
                    n += 1
            self._show(_ERASE * n)
        self.buf = bytearray()
        self._overflow = False

    def _end(self):
        """The line is done: the event for it, and a fresh buffer."""
        self._show(b"\r\n")
        if self._overflow:
            event = ("toolong", "")
        else:
            event = ("line", decode_utf8_replace(bytes(self.buf)))
        self.buf = bytearray()
        self._overflow = False
        return event

    def feed(self, data):
        """Edit with `data`; return the events it completed, in order."""
        events = []
        for b in data:
            last_end, self._last_end = self._last_end, 0
            if self._esc and b < 0x20:
                self._esc = 0       # a control byte ends a sequence (half one from garbage or a dead
                                    # terminal must not swallow the Ctrl-U, Ctrl-C or Enter after it)
            if self._esc:
                if self._esc == 1:
                    self._esc = 2 if b == 0x5B or b == 0x4F else 0    # ESC [ (CSI) or ESC O (SS3)
                elif 0x40 <= b <= 0x7E:
                    self._esc = 0                   # the final byte ends the sequence
                continue
            if b == CR or b == LF:
                if last_end and last_end != b:
                    continue                        # the LF of CR LF (or the CR of LF CR)
                self._last_end = b
                events.append(self._end())
            elif b == BS or b == DEL:
                if self.buf:
                    i = len(self.buf) - 1
                    while i and self.buf[i] & 0xC0 == 0x80:
                        i -= 1                      # continuation bytes: back to the lead byte
                    self.buf = self.buf[:i]         # (MicroPython's bytearray has no del or pop)
                    if not self.secret:
                        self._show(_ERASE)
            elif b == ETX:
                self.buf = bytearray()
                self._overflow = False
                self._show(b"^C\r\n")
                events.append(("cancel", ""))
            elif b == NAK:
                self._erase_line()
            elif b == EOT:
                if not self.buf:
                    events.append(("eof", ""))
            elif b == ESC:
                self._esc = 1
            elif b == TAB or b >= 0x20:
                if b == TAB:
                    b = 0x20
                if len(self.buf) >= self.limit:
                    if not self._overflow:
                        self._show(bytes((BEL,)))
                    self._overflow = True
                    continue
                self.buf.append(b)
                if not self.secret:
                    self._show(bytes((b,)))
            # other control bytes (NUL, BEL, ...) are ignored
        return events

