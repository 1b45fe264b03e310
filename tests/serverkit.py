"""Shared pieces for the tests that drive a real `python -m tinymta serve` (tests/mtaproc.py) with
real clients and raw sockets: test_server_clients.py, test_server_smuggling.py, test_server_errors.py.

    needs("swaks")                      a skip mark when the binary is missing
    make_cert(dir), make_users(dir)     a self-signed cert with IP SANs; a users file (tinymta passwd)
    complete_message(...)               a message with From, Date, Message-ID (tinymta adds only Received)
    Wire(port, source=None)             a raw SMTP client over a socket, every read bounded
    parse_received(body)                the Received field tinymta prepended, checked against T2
    run(cmd, ...), spool_check(path)    subprocesses with timeouts

Everything talks to 127.0.0.1 (clients may bind 127.0.0.2); every wait has a deadline.
"""
import email.utils
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)
TIMEOUT = 10                    # seconds, any single read or client run
PASSWORD = "s3cret pass"        # with a space: clients must quote/encode it right
USER = "sensor"


def needs(binary):
    return pytest.mark.skipif(shutil.which(binary) is None, reason="%s is not installed" % binary)


def run(cmd, stdin=b"", timeout=60, **kw):
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, env=kw.pop("env", ENV), **kw)


def make_cert(d):
    """(cert, key) paths: self-signed, CN localhost, SANs localhost, 127.0.0.1 and 127.0.0.2 (bench.md §6)."""
    cert, key = os.path.join(str(d), "cert.pem"), os.path.join(str(d), "key.pem")
    p = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2", "-keyout", key, "-out", cert])
    assert p.returncode == 0, p.stderr
    return cert, key


def make_users(d, user=USER, password=PASSWORD):
    """A users file written by `python -m tinymta passwd --iterations 1000 USER` (password on stdin)."""
    p = run([sys.executable, "-m", "tinymta", "passwd", "--iterations", "1000", user], (password + "\n").encode(),
            cwd=ROOT)
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    path = os.path.join(str(d), "users")
    with open(path, "wb") as f:
        f.write(p.stdout)
    return path


def tls_server(d):
    """server config keys for STARTTLS + AUTH with a fresh cert and users file in d."""
    cert, key = make_cert(d)
    return {"tls_cert": cert, "tls_key": key, "auth_users_file": make_users(d)}


def complete_message(sender="alice@client.test", rcpt="bob@example.test", subject="test", body=None, tag="1",
                     extra=b""):
    """CRLF lines, ending in CRLF, with From, Date and Message-ID: tinymta must add nothing but Received."""
    if body is None:
        body = b"Line one of %s.\r\n.A line starting with a dot.\r\n\r\nLast line.\r\n" % tag.encode()
    return (b"From: <%s>\r\nTo: <%s>\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            b"Message-ID: <%s.%d@client.test>\r\nSubject: %s\r\n%s\r\n"
            % (sender.encode(), rcpt.encode(), tag.encode(), os.getpid(), subject.encode(), extra)) + body


def stuff(msg):
    """Dot-stuffed DATA payload plus the terminator, for a msg of CRLF lines ending in CRLF."""
    return (b"\r\n" + msg).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


class Wire:
    """A raw SMTP client: exact bytes out, replies parsed, every read bounded by TIMEOUT."""

    def __init__(self, port, source=None, timeout=TIMEOUT):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.local_port = self.sock.getsockname()[1]
        self.buf = b""
        self.timeout = timeout

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.time()))
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed; unread %r" % self.buf)
        self.buf += data

    def reply(self, timeout=None):
        """One whole reply: (code, [lines]); EOFError if the server closes first, socket.timeout if none."""
        deadline = time.time() + (timeout or self.timeout)
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                self._fill(deadline)
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            assert re.match(rb"^[2-5]\d\d[ -]", line), lines
            if line[3:4] == b" ":
                return int(line[:3]), lines

    def cmd(self, line, timeout=None):
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def expect(self, line, code, timeout=None):
        got = self.cmd(line, timeout)
        assert got[0] == code, (line, got)
        return got

    def ehlo(self, name=b"client.test"):
        self.greeting = self.reply()
        assert self.greeting[0] == 220, self.greeting
        return self.expect(b"EHLO " + name, 250)

    def replies_until_close(self, timeout=None):
        """Every reply up to EOF: [(code, lines)]."""
        out = []
        deadline = time.time() + (timeout or self.timeout)
        while True:
            try:
                out.append(self.reply(max(0.01, deadline - time.time())))
            except EOFError:
                return out

    def quiet(self, seconds):
        """True if nothing arrives for `seconds` (and the connection stays open)."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        self.buf += data
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


RECEIVED = re.compile(
    rb"\AReceived: from (?P<helo>[^ \r\n]+) \(\[(?P<ip>[0-9.]+)\]\)\r\n"
    rb"\tby (?P<by>[^ \r\n]+) \(tinymta\) with (?P<proto>[A-Z]+) id (?P<id>[0-9A-Fa-f]+)"
    rb"(?:\r\n\tfor <(?P<for>[^>\r\n]*)>)?;\r\n"
    rb"\t(?P<date>[^\r\n]+)\r\n(?P<rest>[^ \t])")
DATE = re.compile(r"\A(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                  r"\d{4} \d\d:\d\d:\d\d [+-]\d{4}\Z")


def parse_received(body, now=None):
    """The Received field at the top of a stored message, as a dict; asserts T2's shape and a date
    that a strict RFC 5322 reading accepts (numeric zone, 4-digit year) and that is close to now."""
    m = RECEIVED.match(body)
    assert m, body[:300]
    d = dict((k, (v.decode() if v is not None else None)) for k, v in m.groupdict().items())
    d["when"] = check_date(d["date"], now)
    return d


def check_date(date, now=None):
    """An RFC 5322 date-time as tinymta must write it (D3: numeric zone, 4-digit year, no obs- forms),
    read back by email.utils.parsedate_to_datetime and within 5 minutes of now; the datetime."""
    assert DATE.match(date), date
    when = email.utils.parsedate_to_datetime(date)
    assert when.tzinfo is not None, date
    assert abs(when.timestamp() - (now or time.time())) < 300, date
    return when


def queued_id(reply_lines):
    """The queue id from a `250 2.0.0 Ok: queued as ID` reply."""
    m = re.search(rb"queued as ([0-9A-Fa-f]+)", b" ".join(reply_lines))
    assert m, reply_lines
    return m.group(1).decode()


def spool_check(path):
    """`python -m tinymta spool check FILE`: (exit status, output text)."""
    p = run([sys.executable, "-m", "tinymta", "spool", "check", path], cwd=ROOT)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def assert_spool_clean(path):
    rc, out = spool_check(path)
    assert rc == 0 and "result: ok" in out and "interrupted writes: 0" in out, out
    return out
