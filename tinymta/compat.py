"""The one place where CPython and MicroPython differ: time, errno, fsync, CRC, TLS, logging.

Everything else in tinymta imports these names instead of probing the runtime.
The facts behind each shim were measured on the MicroPython 1.29 unix port
(see the project's reference notes): no errno subclasses of OSError, no
``time.monotonic``, a 2000 epoch on some boards, poll() returning objects
instead of fds, no ``logging``, no ``os.fsync``.

This module must not know anything about SMTP, the spool format or the config:
it only smooths over the runtime.
"""
import sys
import time
import errno as _errno
import binascii

MICROPYTHON = sys.implementation.name == "micropython"

try:
    from micropython import const
except ImportError:
    def const(x):
        return x


def _e(name, linux_value):
    return getattr(_errno, name, linux_value)


# MicroPython's errno lacks several names but raises the Linux numbers.
EPERM = _e("EPERM", 1)
ENOENT = _e("ENOENT", 2)
EIO = _e("EIO", 5)
EBADF = _e("EBADF", 9)
EAGAIN = _e("EAGAIN", 11)
EWOULDBLOCK = _e("EWOULDBLOCK", EAGAIN)
ENOMEM = _e("ENOMEM", 12)
EACCES = _e("EACCES", 13)
EEXIST = _e("EEXIST", 17)
EINVAL = _e("EINVAL", 22)
ENOSPC = _e("ENOSPC", 28)
EPIPE = _e("EPIPE", 32)
EADDRINUSE = _e("EADDRINUSE", 98)
ECONNRESET = _e("ECONNRESET", 104)
ENOTCONN = _e("ENOTCONN", 107)
ETIMEDOUT = _e("ETIMEDOUT", 110)
ECONNREFUSED = _e("ECONNREFUSED", 111)
EINPROGRESS = _e("EINPROGRESS", 115)


def oserror_errno(e):
    """The errno of an OSError on either runtime (CPython's TimeoutError has None)."""
    n = getattr(e, "errno", None)
    if n is None and not MICROPYTHON and isinstance(e, TimeoutError):
        return ETIMEDOUT
    return n


def would_block(e):
    return oserror_errno(e) in (EAGAIN, EWOULDBLOCK, EINPROGRESS)


# --- time -----------------------------------------------------------------
if MICROPYTHON:
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
    sleep_ms = time.sleep_ms
    # rp2 counts from 1970, ESP32/stm32 from 2000: gmtime(0) tells which.
    _EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0

    def unix_time():
        return int(time.time()) + _EPOCH_OFFSET
else:
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, delta):
        return a + delta

    def sleep_ms(ms):
        time.sleep(ms / 1000)

    def unix_time():
        return int(time.time())


def timegm(t):
    """Seconds since 1970 for a UTC (Y, M, D, h, m, s, ...) tuple; pure arithmetic, any runtime."""
    y, mo, d, h, mi, s = t[0], t[1], t[2], t[3], t[4], t[5]
    if mo <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + h * 3600 + mi * 60 + s


def utc_tuple(t):
    """(Y, M, D, h, m, s, weekday Mon=0) for unix time t; pure arithmetic (no epoch surprises)."""
    t = int(t)
    days, rem = divmod(t, 86400)
    h, rem = divmod(rem, 3600)
    mi, s = divmod(rem, 60)
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    mo = mp + 3 if mp < 10 else mp - 9
    if mo <= 2:
        y += 1
    return (y, mo, d, h, mi, s, (days + 3) % 7)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_date(t):
    """'Fri, 27 Nov 2026 10:11:51 +0000' for unix time t (there is no strftime on MicroPython)."""
    y, mo, d, h, mi, s, wd = utc_tuple(t)
    return "%s, %d %s %d %02d:%02d:%02d +0000" % (_DAYS[wd], d, _MONTHS[mo - 1], y, h, mi, s)


def iso_time(t):
    y, mo, d, h, mi, s, _ = utc_tuple(t)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, mo, d, h, mi, s)


# --- CRC ------------------------------------------------------------------
try:
    crc32 = binascii.crc32
except AttributeError:  # minimal MicroPython builds compile crc32 out
    _CRC_TABLE = None

    def crc32(data, crc=0):
        global _CRC_TABLE
        if _CRC_TABLE is None:
            tbl = []
            for i in range(256):
                c = i
                for _ in range(8):
                    c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
                tbl.append(c)
            _CRC_TABLE = tbl
        crc ^= 0xFFFFFFFF
        for b in data:
            crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF


# --- files ----------------------------------------------------------------
def fsync_file(f):
    """Make a file object's written data durable (flush() is the commit on littlefs)."""
    f.flush()
    try:
        import os
        if hasattr(os, "fdatasync"):
            os.fdatasync(f.fileno())
        elif hasattr(os, "fsync"):
            os.fsync(f.fileno())
    except (AttributeError, OSError):
        if not MICROPYTHON:
            raise


def file_size(path):
    """Size in bytes of path, or -1 when it does not exist."""
    import os
    try:
        return os.stat(path)[6]
    except OSError as e:
        if oserror_errno(e) == ENOENT:
            return -1
        raise


_OS_ERROR_TEXT = {2: "no such file", 13: "permission denied", 20: "not a directory", 21: "is a directory"}


def read_file(path):
    """A small file's whole contents (config, users, certificates); OSError on failure."""
    f = open(path, "rb")
    try:
        return f.read()
    finally:
        f.close()


def os_error_text(e):
    """A short reason for an OSError, the same words on both runtimes ('no such file', ...)."""
    return _OS_ERROR_TEXT.get(oserror_errno(e)) or " ".join(str(e).split())


# --- bytes ----------------------------------------------------------------
def decode_utf8_replace(b):
    """bytes -> str without ever raising (MicroPython ignores decode's errors argument)."""
    try:
        return bytes(b).decode("utf-8")
    except UnicodeError:
        return "".join(chr(c) if c < 0x80 else "\ufffd" for c in bytes(b))


def random_u32():
    import os
    try:
        return int.from_bytes(os.urandom(4), "little")
    except (AttributeError, NotImplementedError, OSError):
        import random
        return random.getrandbits(32)


# --- TLS ------------------------------------------------------------------
def pem_to_der(pem, label=None):
    """The DER bytes of the PEM blocks in pem (whose BEGIN label contains label, if given),
    concatenated; MicroPython's ssl accepts DER only.  ValueError when there is none."""
    out = b""
    body = None
    for line in bytes(pem).split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN "):
            body = [] if label is None or label.encode() in line else None
        elif line.startswith(b"-----END "):
            if body is not None:
                out += binascii.a2b_base64(b"".join(body))
            body = None
        elif body is not None and b":" not in line:  # skip RFC 1421 headers
            body.append(line)
    if not out:
        raise ValueError("no PEM %s block found" % (label or ""))
    return out


def _read_der(path, label):
    """A PEM file's DER bytes; a file that is not PEM is taken as DER already (boards)."""
    f = open(path, "rb")
    try:
        data = f.read()
    finally:
        f.close()
    return pem_to_der(data, label) if data.lstrip()[:11] == b"-----BEGIN " else data


def server_tls_context(cert_path, key_path):
    """An SSLContext for the SMTP server side (STARTTLS, implicit TLS) from a certificate
    file and its private key.  CPython reads PEM files (leaf first, then intermediates).
    MicroPython reads PEM or DER but sends only the first certificate (verified: no
    intermediates from DER bytes), so a board needs a certificate its peers trust directly."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if MICROPYTHON:
        ctx.load_cert_chain(_read_der(cert_path, "CERTIFICATE"), _read_der(key_path, "PRIVATE KEY"))
    else:
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def client_tls_context(ca_file=None, verify=True):
    """An SSLContext for relaying out.  verify=True always means CERT_REQUIRED plus a host
    name check (MicroPython defaults to CERT_NONE; it checks the name given as
    wrap_socket's server_hostname, so always pass one).  ca_file: PEM or DER CA
    certificates; without it CPython uses the system store and MicroPython, which has
    none, raises ValueError.  verify=False: encryption without authentication."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        if not MICROPYTHON:
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    if MICROPYTHON and ca_file is None:
        raise ValueError("TLS verification on MicroPython needs a CA file (there is no system store)")
    if not MICROPYTHON:
        ctx.check_hostname = True
    if ca_file is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.load_verify_locations(cadata=_read_der(ca_file, "CERTIFICATE"))
    return ctx


# --- blocking calls under a watchdog ----------------------------------------
# On MicroPython a DNS query or a TLS handshake blocks the loop.  A board with a watchdog sets a
# guard: each such call first feeds the watchdog, and its wait is capped below the watchdog's
# timeout, so a slow server gives a failed delivery (retried later), never a reset loop.
_blocking_guard = [None, 0]     # (feed: callable or None, longest blocking wait in ms, 0: none)


def set_blocking_guard(feed, max_ms):
    _blocking_guard[0], _blocking_guard[1] = feed, max_ms


def blocking(want_s, waits=1):
    """Call before a blocking call of `waits` waits of want_s seconds each (a socket timeout
    applies to each wait): feeds the watchdog; the per-wait timeout to use."""
    feed, max_ms = _blocking_guard
    if feed is not None:
        feed()
    if max_ms and want_s * 1000 * waits > max_ms:
        return max_ms / 1000 / waits
    return want_s


# --- logging --------------------------------------------------------------
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_log_level = [20]
_log_sink = [None]  # a callable(line) for tests and the console's log ring, or None for stderr


def set_log_level(name):
    _log_level[0] = _LEVELS.get(name, 20)


def set_log_sink(fn):
    _log_sink[0] = fn


_log_tap = [None]   # a callable(line) that sees every line as well (the console's `log` ring)


def set_log_tap(fn):
    _log_tap[0] = fn


class Logger:
    """Postfix-style 'name: message' lines to stderr; no logging module at import time."""

    def __init__(self, name):
        self.name = name

    def _emit(self, level, label, msg, args):
        if level < _log_level[0]:
            return
        if args:
            msg = msg % args
        line = "tinymta/%s: %s%s" % (self.name, label, msg)
        tap = _log_tap[0]
        if tap is not None:
            tap(line)
        sink = _log_sink[0]
        if sink is not None:
            sink(line)
        else:
            sys.stderr.write(line + "\n")

    def debug(self, msg, *args):
        self._emit(10, "", msg, args)

    def info(self, msg, *args):
        self._emit(20, "", msg, args)

    def warning(self, msg, *args):
        self._emit(30, "warning: ", msg, args)

    def error(self, msg, *args):
        self._emit(40, "error: ", msg, args)


def get_logger(name):
    return Logger(name)
