"""Test-side SMTP helpers for the server tests: a raw, pipelining-capable client and test messages.

    w = Wire(port)                      connect to 127.0.0.1:port; w.greeting is (code, text)
    w.cmd(b"EHLO x") -> (code, text)    one command, one (possibly multi-line) reply
    w.send(raw); w.reply()              write bytes as they are / read one reply
    stuffed(body)                       the DATA payload for body, dot-stuffed, with the final "."
    make_message(tag, size, rng)        a complete message (Date, Message-ID, From) of about size bytes
    smtp_send(smtp, sender, rcpt, body) one transaction over smtplib; returns the DATA (code, text)

Every socket has a timeout; everything talks to 127.0.0.1 only.
"""
import socket

HOST = "127.0.0.1"
# random bytes -> printable ASCII (space .. "~"), so "." starts a line now and then
_PRINTABLE = bytes(32 + (i % 95) for i in range(256))


class Wire:
    def __init__(self, port, timeout=15, greet=True):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply() if greet else None

    def send(self, data):
        self.sock.sendall(data)

    def _line(self):
        while b"\r\n" not in self.buf:
            got = self.sock.recv(65536)
            if not got:
                raise EOFError("connection closed by the server; unread %r" % self.buf)
            self.buf += got
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        """(code, text) of one reply; multi-line texts are joined with newlines."""
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:])
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def cmd(self, line):
        self.send(line + b"\r\n")
        return self.reply()

    def at_eof(self, timeout=5):
        """True when the server has closed the connection (and nothing more was sent)."""
        self.sock.settimeout(timeout)
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def stuffed(body):
    """body (CRLF lines, ending in CRLF) as sent after DATA: dot-stuffed and terminated."""
    assert body.endswith(b"\r\n")
    lines = body[:-2].split(b"\r\n")
    return b"\r\n".join(b"." + l if l[:1] == b"." else l for l in lines) + b"\r\n.\r\n"


def make_message(tag, size, rng):
    """A complete message with a unique tag, about size bytes (at least its header), CRLF lines.

    It carries Date, Message-ID and From, so the server adds only its Received field, and has
    lines that need dot-stuffing ("." and ".." lines, and random lines that start with ".").
    """
    head = ("Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <%s@client.test>\r\n"
            "From: Sensor <sensor@client.test>\r\nTo: <ops@example.org>\r\nSubject: %s\r\n\r\n"
            % (tag, tag)).encode()
    parts = [head, tag.encode() + b"\r\n.\r\n..dots\r\n"]
    n = sum(len(p) for p in parts)
    while n < size:
        k = rng.randint(0, min(300, size - n))
        line = rng.randbytes(k).translate(_PRINTABLE) + b"\r\n"
        parts.append(line)
        n += len(line)
    return b"".join(parts)


def smtp_send(smtp, sender, rcpt, body):
    """MAIL, RCPT, DATA over an smtplib.SMTP in EHLO state; the DATA (code, text), or the failure."""
    code, text = smtp.mail(sender)
    if code != 250:
        return code, text
    code, text = smtp.rcpt(rcpt)
    if code != 250:
        return code, text
    return smtp.data(body)


def wire_transaction(w, sender, rcpt, body, pipelined=True):
    """MAIL, RCPT, DATA and the body over a Wire in EHLO state; the final (code, text)."""
    if pipelined:
        w.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (sender.encode(), rcpt.encode()))
        replies = [w.reply() for _ in range(3)]
    else:
        replies = [w.cmd(b"MAIL FROM:<%s>" % sender.encode()), w.cmd(b"RCPT TO:<%s>" % rcpt.encode()),
                   w.cmd(b"DATA")]
    assert [r[0] for r in replies] == [250, 250, 354], replies
    w.send(stuffed(body))
    return w.reply()
