"""pyserial's `serial.Serial`, the subset tinymta uses, for MicroPython (micropython-lib style).

    ser = serial.Serial(port, baudrate=115200, timeout=0)
    ser.read(n) -> bytes (at most n; b"" when nothing is waiting and timeout is 0)
    ser.write(data) -> n;  ser.in_waiting;  ser.close();  ser.is_open
    select.poll().register(ser.pollable, ...)      (the device itself; ser answers poll via
                                                    ioctl too, but the port's poll() spins on it)

`port` names what to open:
    "uart0", "uart1", ...   machine.UART(N, baudrate) (pins: the board's defaults for that UART)
    "usb" or "stdio"        the USB-CDC (or unix terminal) standard input and output
    a path ("/dev/ttyS0")   a file opened read/write: the unix port's ptys, used by the tests

Like pyserial, a port that cannot be opened raises SerialException (an OSError), and so does a
read or write on a device that went away, so tinymta's console treats both runtimes alike.
Only timeout 0 (non-blocking) and None (blocking) are implemented, the two tinymta uses.
This module must not know tinymta.
"""
import io
import select
import sys

POLL_RD = 1         # MicroPython's MP_STREAM_POLL flags (as in select.POLLIN / POLLOUT)
POLL_WR = 4
_MP_STREAM_POLL = 3


class SerialException(OSError):
    pass


class Serial(io.IOBase):
    def __init__(self, port=None, baudrate=9600, timeout=None, **ignored):
        self.port, self.baudrate, self.timeout = port, baudrate, timeout
        self.is_open = False
        self._in = self._out = None
        self._file = None
        if port is not None:
            self.open()

    def open(self):
        port = self.port
        try:
            if port.startswith("uart") and port[4:].isdigit():
                import machine
                dev = machine.UART(int(port[4:]), self.baudrate)
                self._in = self._out = dev
            elif port in ("usb", "stdio"):
                self._in = getattr(sys.stdin, "buffer", sys.stdin)
                self._out = getattr(sys.stdout, "buffer", sys.stdout)
                self.pollable = sys.stdin
            else:
                self._file = open(port, "r+b")
                self._in = self._out = self._file
        except (OSError, ValueError, ImportError, AttributeError) as e:   # (no machine.UART: unix port)
            raise SerialException("could not open port %s: %s" % (port, e))
        if port not in ("usb", "stdio"):
            self.pollable = self._in    # (every open: a reopened Serial polls its new device)
        self._poll = select.poll()
        self._poll.register(self.pollable, select.POLLIN)
        self.is_open = True

    def _ready(self):
        for _, ev in self._poll.poll(0):
            if ev & (select.POLLERR | select.POLLHUP) and not ev & select.POLLIN:
                raise SerialException("device reports an error or hang-up")
            return True
        return False

    @property
    def in_waiting(self):
        any_ = getattr(self._in, "any", None)      # machine.UART knows its buffer fill
        if any_ is not None:
            return any_()
        return 1 if self._ready() else 0

    def read(self, size=1):
        if not self.is_open:
            raise SerialException("port not open")
        got = bytearray()
        try:
            while len(got) < size:
                if self.timeout == 0 and not self._ready():
                    break
                b = self._in.read(1)
                if not b:
                    if self._file is not None and not got:
                        raise SerialException("device gone (end of file)")
                    break
                got.extend(b)
        except OSError as e:
            if isinstance(e, SerialException):
                raise
            raise SerialException("read failed: %s" % e)
        return bytes(got)

    def write(self, data):
        if not self.is_open:
            raise SerialException("port not open")
        try:
            n = self._out.write(data)
        except OSError as e:
            raise SerialException("write failed: %s" % e)
        if n is None:   # machine.UART: None when its timeout passed with nothing written
            return 0 if hasattr(self._out, "any") else len(data)
        return n

    def flush(self):
        f = getattr(self._out, "flush", None)
        if f is not None:
            f()

    def ioctl(self, req, arg):
        """select.poll on the Serial object itself works too (slower than on .pollable)."""
        if req == _MP_STREAM_POLL:
            ready = POLL_WR & arg
            if arg & POLL_RD and self._ready():
                ready |= POLL_RD
            return ready
        return -1      # anything else (a file number above all: 0 would make poll watch stdin)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        self.is_open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
