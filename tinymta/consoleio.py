"""Console transports a person types into: a serial port and standard input, on both runtimes.

    attach(server, console, cfg, stdin=False) -> [objects with close()]

A Terminal joins a byte stream (a Port) to the line editor and the interpreter: it echoes,
runs each finished line, writes the answer with CRLF line ends and a prompt.  Output waits
in a bounded buffer and goes out as the port takes it (POLLOUT), so a terminal that stops
reading never stalls the MTA; past OUT_MAX the oldest output is dropped.

SerialConsole owns a Terminal on `console.serial` (pyserial on CPython, the boards' serial
shim on MicroPython).  When the device fails (a USB gadget unplugged, the pty gone: EIO,
POLLHUP, a vanished path) it closes it, logs once, and tries to open it again every
REOPEN_MS from a loop hook, so SMTP keeps being served and the console comes back by itself.

Standard input (`tinymta serve --console`): on CPython a terminal is put in raw mode (the
editor echoes) and restored at close; a pipe gets no echo.  End of input detaches the console,
never the MTA.  Nothing typed on any transport can raise out of the loop.
This module must not know the commands (console.py) or SMTP.
"""
import sys

from tinymta import compat, netio
from tinymta.console import Session
from tinymta.lineedit import LineEditor

log = compat.get_logger("console")

PROMPT = b"tinymta> "
OUT_MAX = 16384
REOPEN_MS = 2000
READ_MAX = 512
STALE_LINE_MS = 5 * 60000   # a half-typed line idle this long is dropped before new input
_EVENT_BYTES = (13, 10, 3, 4)     # CR LF Ctrl-C Ctrl-D: the bytes that can end an editor event


class PortGone(Exception):
    """The device or stream under a Port failed or ended."""


class FdPort:
    """CPython: non-blocking reads and writes on the file descriptors of `obj` (and `out`)."""

    def __init__(self, obj, out=None, closer=None):
        import os
        self._os = os
        self.pollable = obj
        self.rfd = obj.fileno()
        self.wfd = out.fileno() if out is not None else self.rfd
        self._closer = closer

    def read(self):
        try:
            data = self._os.read(self.rfd, READ_MAX)
        except OSError as e:
            if compat.would_block(e):
                return None
            raise PortGone(compat.os_error_text(e))
        if not data:
            raise PortGone("end of input")
        return data

    def write(self, data):
        try:
            return self._os.write(self.wfd, data)
        except OSError as e:
            if compat.would_block(e):
                return 0
            raise PortGone(compat.os_error_text(e))

    def close(self):
        if self._closer is not None:
            self._closer()


class StreamPort:
    """MicroPython: a pollable stream (the serial shim, sys.stdin) read a byte at a time while ready."""

    def __init__(self, stream, out=None, closer=None):
        import select
        # The serial shim names what to poll (its file, UART or stdin): on the unix port a
        # Python stream object given to poll is taken for fd 0 (its ioctl answers 0 to GET_FILENO)
        self.pollable = getattr(stream, "pollable", stream)
        self._in = getattr(stream, "buffer", stream)
        self._out = getattr(out, "buffer", out) if out is not None else self._in
        self._poll = select.poll()
        self._poll.register(self.pollable, select.POLLIN)
        self._closer = closer

    def read(self):
        got = bytearray()
        while len(got) < READ_MAX and self._poll.poll(0):
            try:
                b = self._in.read(1)
            except OSError as e:
                raise PortGone(compat.os_error_text(e))
            if not b:
                if got:
                    break
                raise PortGone("end of input")
            got.extend(b)
        return bytes(got) if got else None

    def write(self, data):
        try:
            n = self._out.write(data)
        except OSError as e:
            raise PortGone(compat.os_error_text(e))
        return len(data) if n is None else n

    def close(self):
        if self._closer is not None:
            self._closer()


class Terminal:
    """A person's console session on one Port."""

    def __init__(self, server, console, port, name, trusted, echo=True, on_gone=None):
        self.server, self.console, self.port, self.name = server, console, port, name
        self.editor = LineEditor(echo=echo)
        self.session = Session(trusted)
        self.out = bytearray()
        self.on_gone = on_gone
        self.tty_adds_cr = False
        self.last_input = compat.ticks_ms()
        self.watching = 0
        server.watch(port.pollable, netio.POLLIN, self._on_event)
        self.watching = netio.POLLIN

    def greet(self):
        self.send("\r\ntinymta %s console on %s (%s); type help\r\n" % (
            self._version(), self.server.hostname, self.name), prompt=True)

    def _version(self):
        from tinymta import __version__
        return __version__

    def send(self, text, prompt=False):
        data = text.encode() if isinstance(text, str) else text
        if self.tty_adds_cr:                # the terminal driver turns LF into CR LF itself
            data = data.replace(b"\r\n", b"\n")
        if prompt:
            data += b"password: " if self.session.reading_password else PROMPT
        self.out.extend(data)
        if len(self.out) > OUT_MAX:     # nobody is reading: keep the newest output only
            self.out = self.out[-OUT_MAX:]   # (MicroPython: no del on bytearray)
        self._flush()

    def _flush(self):
        if self.port is None:
            self.out = bytearray()
            return
        while self.out:
            n = self.port.write(bytes(self.out[:1024]))
            if not n:
                break
            self.out = self.out[n:]
        want = netio.POLLIN | (netio.POLLOUT if self.out else 0)
        if want != self.watching:
            self.server.watch(self.port.pollable, want, self._on_event)
            self.watching = want

    def _on_event(self, events):
        try:
            if events & netio.POLLOUT:
                self._flush()
            if events & (netio.POLLIN | netio.POLLERR | netio.POLLHUP):
                data = self.port.read()
                if data is None:
                    if events & (netio.POLLERR | netio.POLLHUP):
                        raise PortGone("hang-up")
                    return
                self.feed(data)
        except PortGone as e:
            self.close()
            if self.on_gone is not None:
                self.on_gone(str(e))
        except Exception as e:      # a fault of ours (MemoryError on a board): say so, keep the console
            log.error("console %s: %r", self.name, e)
            self.editor.reset()
            self.session.reading_password = False
            try:
                self.send("\r\nerror: internal error (%s); the line was dropped\r\n" % type(e).__name__, prompt=True)
            except Exception:
                pass

    def feed(self, data):
        now = compat.ticks_ms()
        if (self.editor.buf or self.session.reading_password) and \
                compat.ticks_diff(now, self.last_input) > STALE_LINE_MS:
            # A half-typed line left by a terminal that went away (a pty tells us nothing) must
            # not run when the next person presses Enter (nor be taken as a password).
            self.editor.reset()
            self.session.reading_password = False
            self.send("\r\n(a half-typed line from %d minutes ago was dropped)\r\n" % (STALE_LINE_MS // 60000),
                      prompt=True)
        self.last_input = now
        # One line at a time: each line is answered (and the editor told a password comes next)
        # before the bytes after it are edited and echoed.  Fed whole, "unlock\rPASSWORD\r" in
        # one read (pasted, typed ahead) echoed the password, and later lines' echo came first.
        start = 0
        for i in range(len(data)):
            if data[i] in _EVENT_BYTES:
                self._feed(data[start:i + 1])
                start = i + 1
        if start < len(data):
            self._feed(data[start:])

    def _feed(self, data):
        ed = self.editor
        for kind, line in ed.feed(data):
            out = ed.take_output()
            if kind == "line":
                ok, text = self.console.execute(self.session, line)
                out += (text.replace("\n", "\r\n") + "\r\n").encode() if text else b""
                ed.secret = self.session.reading_password
            elif kind == "cancel":
                self.session.reading_password = ed.secret = False
            elif kind == "eof":
                out += b"(Ctrl-D: this console stays open; type help, or quit to lock it)\r\n"
            elif kind == "toolong":
                log.info("console %s: a line over %d bytes ignored", self.name, ed.limit)
                out += ("error: line too long (at most %d bytes); ignored\r\n" % ed.limit).encode()
            self.session.closing = False        # quit on a terminal only locks it again
            self.send(out, prompt=True)
        rest = ed.take_output()
        if rest:
            self.send(rest)

    def close(self):
        if self.port is None:
            return
        self.server.unwatch(self.port.pollable)
        try:
            self.port.close()
        except (OSError, PortGone):
            pass
        self.port = None


class SerialConsole:
    """The console on console.serial, reopened after the device vanishes."""

    def __init__(self, server, console, device, baud):
        self.server, self.console, self.device, self.baud = server, console, device, baud
        self.term = None
        self.retry_at = None
        self.reported = False
        self._open()
        server.hooks.append(self._tick)

    def _open(self):
        try:
            import serial
            ser = serial.Serial(self.device, self.baud, timeout=0)
        except Exception as e:      # ImportError, OSError, pyserial's SerialException (any device failure)
            if not self.reported:
                log.warning("console: cannot open serial %s: %s; retrying every %d s",
                            self.device, _reason(e), REOPEN_MS // 1000)
                self.reported = True
            self.retry_at = compat.ticks_add(compat.ticks_ms(), REOPEN_MS)
            return
        if compat.MICROPYTHON:
            port = StreamPort(ser, closer=ser.close)
        else:
            port = FdPort(ser, closer=ser.close)
        if self.reported:
            log.info("console: serial %s is back", self.device)
        self.reported = False
        self.retry_at = None
        self.term = Terminal(self.server, self.console, port, "serial " + self.device,
                             trusted=False, on_gone=self._gone)
        try:
            self.term.greet()
        except PortGone as e:       # gone again at once: from a loop hook this would stop the MTA
            self.term.close()
            self._gone(str(e))

    def _gone(self, why):
        log.warning("console: serial %s lost (%s); retrying every %d s", self.device, why, REOPEN_MS // 1000)
        self.reported = True
        self.term = None
        self.retry_at = compat.ticks_add(compat.ticks_ms(), REOPEN_MS)

    def _tick(self, now_ms):
        if self.term is None and self.retry_at is not None and compat.ticks_diff(now_ms, self.retry_at) >= 0:
            self._open()

    def close(self):
        if self.term is not None:
            self.term.close()
        self.retry_at = None


class StdinConsole:
    """`serve --console`: the console on standard input and output."""

    def __init__(self, server, console):
        self._restore = self._unblock = None
        tty = _isatty(sys.stdin)
        if compat.MICROPYTHON:
            port = StreamPort(sys.stdin, sys.stdout)
            echo = sys.platform != "linux"      # a board's USB console echoes nothing itself
        else:
            import os
            if tty:
                self._restore = _raw_mode(sys.stdin.fileno())
            # output nobody reads (a full pipe) must wait in the Terminal's bounded buffer, never
            # block the MTA; the hook below retries it each loop pass
            out_fd = sys.stdout.fileno()
            blocking = os.get_blocking(out_fd)
            os.set_blocking(out_fd, False)
            self._unblock = lambda: os.set_blocking(out_fd, blocking)
            port = FdPort(sys.stdin, sys.stdout)
            echo = tty
        self.term = Terminal(server, console, port, "stdin", trusted=True, echo=echo, on_gone=self._gone)
        self.term.tty_adds_cr = self._restore is not None    # _raw_mode keeps output processing (ONLCR)
        server.hooks.append(self._retry_output)
        self.term.greet()

    def _retry_output(self, now_ms):
        if self.term.out:
            self.term._flush()

    def _gone(self, why):
        log.info("console: standard input %s; the MTA goes on without it", why)
        self._reset_tty()

    def _reset_tty(self):
        if self._restore is not None:
            self._restore()
            self._restore = None
        if self._unblock is not None:
            self._unblock()
            self._unblock = None

    def close(self):
        self.term.close()
        self._reset_tty()


def _isatty(f):
    try:
        return f.isatty()
    except (AttributeError, OSError):
        return False


def _raw_mode(fd):
    """Put a terminal in raw mode (no echo, no line buffering, Ctrl-C as data); a function undoes it."""
    import termios
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
    new[0] &= ~(termios.ICRNL | termios.IXON)
    termios.tcsetattr(fd, termios.TCSANOW, new)
    return lambda: termios.tcsetattr(fd, termios.TCSANOW, old)


def _reason(e):
    return compat.os_error_text(e) if isinstance(e, OSError) else " ".join(str(e).split()) or type(e).__name__


def attach(server, console, cfg, stdin=False):
    """Start the configured console transports; the list of things to close at shutdown."""
    parts = []
    try:
        if cfg.console.socket and not compat.MICROPYTHON:     # boards have no UNIX sockets
            from tinymta.ctlsock import ControlSocket
            parts.append(ControlSocket(server, console, cfg.console.socket))   # the one that can refuse
        if cfg.console.serial:
            parts.append(SerialConsole(server, console, cfg.console.serial, cfg.console.baud))
        if stdin:
            parts.append(StdinConsole(server, console))
    except Exception:
        for part in parts:          # a failed start leaves no raw terminal or open port behind
            part.close()
        raise
    return parts
