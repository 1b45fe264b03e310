"""Host-side clients of the console (CPython): the control-socket CLI and `tinymta console PORT`.

`tinymta status|mailq|flush|hold|release|delete|retry|show [ID...] [--json] [-c FILE]` sends
one console command per ID over the running MTA's control socket (console.socket of the same
config file `serve` reads) and prints the answer.  Exit codes for scripts:

    0   done                          1   the MTA refused (no such id, message in delivery...)
    2   bad usage or config file     69   the MTA is not running (EX_UNAVAILABLE)
    75  the MTA did not answer in time, or is busy or stopping (EX_TEMPFAIL)
    77  no permission on the control socket (EX_NOPERM: run as the MTA's user or root)

`tinymta console PORT [--baud N]` talks to a device's serial console the way a person at
picocom does, with line history (readline) when run in a terminal: it sends each line with
CR, reads until the device's prompt comes back, and shows the answer without the echo.
This module must not know the commands' meanings, the spool or SMTP.
"""
import json
import os
import socket
import sys

from tinymta import config

EX_REFUSED, EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM = 1, 2, 69, 75, 77
PROMPTS = (b"tinymta> ", b"password: ")


class CtlError(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def socket_path(config_path):
    try:
        cfg = config.load(config_path)
    except config.ConfigError as e:
        raise CtlError(EX_USAGE, str(e))
    if not cfg.console.socket:
        raise CtlError(EX_USAGE, "%s: console.socket is empty: the control socket is off" % cfg.source)
    return cfg.console.socket


class Control:
    """One connection to the control socket; request() per command."""

    def __init__(self, path, timeout=15):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buf = b""
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            if isinstance(e, PermissionError):
                raise CtlError(EX_NOPERM, "permission denied on the control socket %s (it is the MTA"
                                          " user's only: run as that user or root)" % path)
            if isinstance(e, socket.timeout):
                raise CtlError(EX_TEMPFAIL, "the MTA did not answer on %s" % path)
            raise CtlError(EX_UNAVAILABLE, "the MTA is not running (no control socket answers at %s: %s)"
                           % (path, e.strerror or e))

    def request(self, line):
        """(ok, output) for one console command line."""
        try:
            self.sock.sendall(line.encode() + b"\n")
            while b"\n" not in self.buf:
                got = self.sock.recv(65536)
                if not got:     # it accepted, so it runs: busy or stopping; try again later
                    raise CtlError(EX_TEMPFAIL, "the MTA closed the control connection (busy or stopping)")
                self.buf += got
        except socket.timeout:
            raise CtlError(EX_TEMPFAIL, "the MTA did not answer in time")
        except OSError as e:
            raise CtlError(EX_TEMPFAIL, "control connection lost: %s" % (e.strerror or e))
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
            ok, output = bool(reply["ok"]), str(reply["output"])
        except (ValueError, KeyError, TypeError):
            raise CtlError(EX_UNAVAILABLE, "the control socket answered something that is not tinymta's")
        if reply.get("busy"):
            raise CtlError(EX_TEMPFAIL, output[7:] if output.startswith("error: ") else output)
        return ok, output

    def close(self):
        self.sock.close()


def run(command, ids, as_json, config_path, out=None, err=None):
    """The control-socket CLI: one request per id (or one without ids); the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    for target in ids or ():
        if not target or [1 for ch in target if ch <= " " or ch == "\x7f"]:   # one id is one word
            err.write("tinymta: %r is not a queue id (see tinymta mailq)\n" % target)
            return EX_USAGE
    try:
        ctl = Control(socket_path(config_path))
    except CtlError as e:
        err.write("tinymta: %s\n" % e)
        return e.code
    code = 0
    try:
        for target in ids or [None]:
            line = command + ("" if target is None else " " + target) + (" --json" if as_json else "")
            ok, text = ctl.request(line)
            if ok or as_json:
                out.write(text + "\n")
            else:
                err.write("tinymta: %s\n" % (text[7:] if text.startswith("error: ") else text))
            if not ok:
                code = EX_REFUSED
    except CtlError as e:
        err.write("tinymta: %s\n" % e)
        return e.code
    finally:
        ctl.close()
    return code


# --- tinymta console PORT ----------------------------------------------------------------
def _read_reply(ser, limit_s=5.0):
    """Device output up to and including a prompt (or whatever came before the time limit)."""
    import time
    got = bytearray()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        chunk = ser.read(4096)
        if chunk:
            got.extend(chunk)
            if got.endswith(PROMPTS[0]) or got.endswith(PROMPTS[1]):
                break
    return bytes(got)


def _drain(ser, quiet_s=0.3, limit_s=5.0):
    """Discard what the device sent before we came (a previous session's unread answers) until
    it has been quiet for quiet_s: left in, it was shown as the answer to our first command."""
    import time
    now = time.monotonic()
    deadline, last = now + limit_s, now
    while now < deadline and now - last < quiet_s:
        if ser.read(4096):
            last = time.monotonic()
        now = time.monotonic()


def _show(reply, sent, out):
    """Print a reply without the device's echo of `sent` and without the trailing prompt."""
    text = reply
    if sent is not None and text.startswith(sent + b"\r\n"):
        text = text[len(sent) + 2:]
    for p in PROMPTS:
        if text.endswith(p):
            text = text[:-len(p)]
            break
    out.write(text.decode("utf-8", "replace").replace("\r\n", "\n"))
    out.flush()
    return reply.endswith(PROMPTS[1])


def console(port, baud=115200, inp=None, out=None, history=None):
    """Interactive client for a device's serial console; returns an exit code."""
    import serial
    inp, out = inp or sys.stdin, out or sys.stdout
    tty = inp.isatty()
    readline = None
    if tty:
        try:
            import readline
            history = history or os.path.expanduser("~/.tinymta_console_history")
            try:
                readline.read_history_file(history)
            except OSError:
                pass
        except ImportError:
            pass
    try:
        ser = serial.Serial(port, baud, timeout=0.05)
    except (OSError, ValueError) as e:
        sys.stderr.write("tinymta console: %s: %s\n" % (port, e))
        return EX_UNAVAILABLE
    code = 0
    try:
        _drain(ser)
        ser.write(b"\x15\r")    # Ctrl-U, Enter: a clean line and a fresh prompt whatever came before
        # (without the echo of that Ctrl-U: the erasure of a half line a previous session left)
        wants_password = _show(_read_reply(ser).replace(b"\b \b", b""), None, out)
        while True:
            try:
                if wants_password and tty:
                    import getpass
                    line = getpass.getpass("password: ")
                elif tty:
                    line = input("tinymta> ")
                else:
                    line = inp.readline()
                    if not line:
                        raise EOFError
                    line = line.rstrip("\r\n")
            except EOFError:
                break
            except KeyboardInterrupt:
                out.write("\n")
                continue
            sent = line.encode()
            ser.write(sent + b"\r")
            reply = _read_reply(ser)
            wants_password = _show(reply, None if wants_password else sent, out)
            if line.strip() in ("quit", "exit"):
                break
    except (OSError, serial.SerialException) as e:
        sys.stderr.write("\ntinymta console: %s: device lost (%s)\n" % (port, e))
        code = 74       # EX_IOERR
    finally:
        ser.close()
        if tty and readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass
    return code
