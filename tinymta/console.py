"""The console's command interpreter: one command set for serial, control socket and stdin.

    con = Console(server)                    # server: the running Server (spool, relay, cfg)
    sess = Session(trusted=False)            # one per attached person or client
    ok, text = con.execute(sess, "mailq --json")

Commands (DESIGN.md): help status mailq show flush retry hold release delete stats log config
send version, plus unlock/lock/quit for sessions.  Each answers in readable text, or with
`--json` (or -j) as one line of JSON.  `text` uses "\\n" line ends; transports turn them into
what their wire wants (CRLF on terminals).

State-changing commands (flush retry hold release delete send) need an unlocked session when
console.password is set and the session is not trusted (serial; the control socket is
protected by its file mode and standard input by whoever started the MTA).  `unlock` asks for
the password on the next line (sess.reading_password tells the transport not to echo it).

Mail is never lost here: delete is the only command that drops a message, it refuses one that
is being delivered, and its removal is synced to the spool before it answers.  Bad input (an
unknown command, a bad id, missing arguments) is an "error: ..." answer, never an exception.
This module must not know the transports, line editing, sockets or the spool's format.
"""
import json
import sys

from tinymta import __version__, compat, consoleview
from tinymta.config import to_json_dict
from tinymta.spoolfmt import SpoolError, SpoolFull, format_id, parse_id

log = compat.get_logger("console")

LOG_LINES = 64          # log lines kept in RAM for `log` (about 8 KB at most)
LOG_LINE_MAX = 160
_MUTATING = ("flush", "retry", "hold", "release", "delete", "send")


class CommandError(Exception):
    """A command's user-facing failure: its text becomes 'error: ...'."""


class Session:
    def __init__(self, trusted=False):
        self.trusted = trusted
        self.unlocked = False
        self.reading_password = False
        self.closing = False        # the client asked to end the session (quit)


class LogRing:
    """The last LOG_LINES log lines with their times, filled through compat.set_log_tap."""

    def __init__(self, size=LOG_LINES):
        self.size = size
        self.lines = []

    def __call__(self, line):
        if len(self.lines) >= self.size:
            self.lines.pop(0)
        self.lines.append((compat.unix_time(), line[:LOG_LINE_MAX]))


HELP = (
    ("help", "", "this list"),
    ("status", "", "uptime, spool, queue, counters and the health of each hop"),
    ("mailq", "", "the queue: id, arrival, size, sender, recipients and last error"),
    ("show", "ID", "one message: envelope, state and headers"),
    ("flush", "", "try every deferred message now"),
    ("retry", "ID", "try one message now"),
    ("hold", "ID", "keep a message from being delivered until release"),
    ("release", "ID", "let a held message go (it is tried at once)"),
    ("delete", "ID", "remove a message for good (no bounce is sent)"),
    ("stats", "", "counters since start and spool wear"),
    ("log", "[N]", "the last N log lines (default 20)"),
    ("config", "", "the running configuration (secrets hidden)"),
    ("send", "ADDRESS", "queue a test message to ADDRESS"),
    ("version", "", "tinymta and runtime versions"),
    ("unlock", "", "enter console.password to allow changes (serial)"),
    ("lock", "", "lock changes again"),
    ("quit", "", "end this session"),
)


class Console:
    def __init__(self, server, log_ring=None):
        self.server = server
        self.started = compat.unix_time()
        self.log_ring = log_ring
        self.password = server.cfg.console.password

    # --- the entry point ---------------------------------------------------------------
    def execute(self, sess, line):
        """(ok, text) for one command line; never raises for bad input."""
        if sess.reading_password:
            if not line:            # Enter alone: no guess to judge, the unlock is called off
                sess.reading_password = False
                return True, "unlock called off"
            return self._check_password(sess, line)
        words = line.split()
        as_json = False
        if "--json" in words or "-j" in words:
            as_json = True
            words = [w for w in words if w not in ("--json", "-j")]
        if not words:
            return True, ""
        name, args = words[0].lower(), words[1:]
        handler = getattr(self, "cmd_" + name, None) if name.isalpha() else None
        try:
            if handler is None:
                raise CommandError("unknown command %r; type help" % _clip(words[0]))
            if name in _MUTATING and self.password and not sess.trusted and not sess.unlocked:
                raise CommandError("%s changes the queue: type unlock and the console password first" % name)
            data, text = handler(sess, args)
        except CommandError as e:
            log.info("%s: %s", _clip(name), e)
            if as_json:
                return False, json.dumps({"ok": False, "error": str(e)})
            return False, "error: %s" % e
        except Exception as e:      # the spool or the host failed, or a fault of ours: never raised
            log.error("%s failed: %r", name, e)
            msg = "%s failed: %s" % (name, e if isinstance(e, (SpoolError, OSError, ValueError)) else repr(e))
            return False, json.dumps({"ok": False, "error": msg}) if as_json else "error: " + msg
        if as_json:
            return True, json.dumps(data)
        return True, text

    # --- helpers ----------------------------------------------------------------------
    @property
    def queue(self):
        return self.server.relay.queue

    def _one_id(self, args, what="a queue id"):
        if len(args) != 1:
            raise CommandError("needs %s (see mailq)" % what)
        try:
            msg_id = parse_id(args[0])
        except ValueError:
            raise CommandError("%r is not a queue id (12 hex digits, see mailq)" % _clip(args[0]))
        if msg_id not in self.server.spool:
            raise CommandError("no message %s in the queue" % _clip(args[0]).upper())
        return msg_id

    def _entry(self, msg_id):
        e = self.queue.entries.get(msg_id)
        if e is None:       # in the spool, not in the queue: re-adopt it so the console can act
            now = compat.unix_time()
            self.queue.add(msg_id, self.server.spool.message(msg_id).arrived, now)
            e = self.queue.entries[msg_id]
        return e

    # --- commands: each returns (data for JSON, text) -------------------------------------
    def cmd_help(self, sess, args):
        rows = ["%-8s %-8s %s" % h for h in HELP]
        return {"commands": [h[0] for h in HELP]}, "\n".join(
            rows + ["add --json to any command for one line of JSON"])

    def cmd_version(self, sess, args):
        impl = sys.implementation
        rt = "%s %s" % (impl.name, ".".join(str(x) for x in impl.version[:3]))
        return {"version": __version__, "runtime": rt}, "tinymta %s (%s)" % (__version__, rt)

    def cmd_status(self, sess, args):
        return consoleview.status(self.server, self.started)

    def cmd_mailq(self, sess, args):
        return consoleview.mailq(self.server)

    def cmd_show(self, sess, args):
        return consoleview.show(self.server, self._one_id(args))

    def cmd_flush(self, sess, args):
        if args:
            raise CommandError("flush takes no arguments (retry ID tries one message)")
        self.queue.flush(compat.unix_time())
        n = len(self.queue.due(compat.unix_time()))
        log.info("flush: %s due now", consoleview.count(n, "message"))
        return {"ok": True, "due": n}, "flushing: %s due now" % consoleview.count(n, "message")

    def cmd_retry(self, sess, args):
        msg_id = self._one_id(args)
        e = self._entry(msg_id)
        if e.held:
            raise CommandError("%s is held; release it first" % format_id(msg_id))
        self.queue.retry(msg_id, compat.unix_time())
        log.info("retry %s", format_id(msg_id))
        return {"ok": True, "queue_id": format_id(msg_id)}, "%s: will be tried now" % format_id(msg_id)

    def cmd_hold(self, sess, args):
        msg_id = self._one_id(args)
        e = self._entry(msg_id)
        self.queue.hold(msg_id)
        log.info("hold %s", format_id(msg_id))
        note = " (a delivery already under way finishes first)" if e.busy else ""
        return {"ok": True, "queue_id": format_id(msg_id)}, "%s: held%s" % (format_id(msg_id), note)

    def cmd_release(self, sess, args):
        msg_id = self._one_id(args)
        e = self._entry(msg_id)
        if not e.held:
            raise CommandError("%s is not held" % format_id(msg_id))
        self.queue.release(msg_id, compat.unix_time())
        log.info("release %s", format_id(msg_id))
        return {"ok": True, "queue_id": format_id(msg_id)}, "%s: released, will be tried now" % format_id(msg_id)

    def cmd_delete(self, sess, args):
        msg_id = self._one_id(args)
        e = self.queue.entries.get(msg_id)
        if e is not None and e.busy:
            raise CommandError("%s is being delivered now; hold it, then delete it" % format_id(msg_id))
        sp = self.server.spool
        m = sp.message(msg_id)
        sp.ack(msg_id, m.recipients)
        self.queue.remove(msg_id)   # gone from the spool's index: the queue must agree at once
        log.warning("deleted %s from <%s> to %d recipients (no bounce)",
                    format_id(msg_id), m.sender, len(m.recipients))
        try:
            sp.flush()              # the deletion is durable before we say so
        except SpoolError as e:
            raise CommandError("%s deleted, but not yet on flash (%s): it may come back after a restart"
                               % (format_id(msg_id), e))
        return {"ok": True, "queue_id": format_id(msg_id)}, "%s: deleted" % format_id(msg_id)

    def cmd_stats(self, sess, args):
        return consoleview.stats(self.server)

    def cmd_log(self, sess, args):
        n = 20
        if args:
            try:
                n = int(args[0])
            except ValueError:
                n = -1
            if len(args) > 1 or not 1 <= n <= LOG_LINES:
                raise CommandError("log takes one number from 1 to %d" % LOG_LINES)
        lines = self.log_ring.lines[-n:] if self.log_ring else []
        return {"log": [{"time": t, "line": s} for t, s in lines]}, \
            "\n".join("%s %s" % (compat.iso_time(t), s) for t, s in lines) or "(no log lines yet)"

    def cmd_config(self, sess, args):
        d = to_json_dict(self.server.cfg, redact=True)
        lines = []
        for sec in sorted(d):
            for key in sorted(d[sec]):
                lines.append("%s.%s = %s" % (sec, key, json.dumps(d[sec][key])))
        return d, "\n".join(lines)

    def cmd_send(self, sess, args):
        if len(args) != 1:
            raise CommandError("send needs one address: send you@example.com")
        to = args[0]
        if to.startswith("<") and to.endswith(">"):
            to = to[1:-1]
        local, _, domain = to.rpartition("@")
        if not local or "" in domain.split(".") or "." not in domain or len(to) > 254 or [1 for c in to if c <= " " or c in "<>()[],;:\\\""]:
            raise CommandError("%r is not a mail address" % _clip(args[0]))
        host = self.server.hostname
        now = compat.unix_time()
        body = ("From: tinymta console <postmaster@%s>\r\nTo: <%s>\r\nSubject: tinymta test message from %s\r\n"
                "Date: %s\r\nMessage-ID: <test.%d.%08x@%s>\r\nAuto-Submitted: auto-generated\r\n\r\n"
                "This test message was queued from the tinymta console on %s at %s.\r\n"
                % (host, to, host, compat.rfc5322_date(now), now, compat.random_u32(), host, host,
                   compat.iso_time(now)))
        try:
            msg_id = self.server.relay.submit("postmaster@" + host, [to], body.encode())
        except SpoolFull:
            raise CommandError("the spool is full; nothing was queued")
        log.info("test message %s to <%s> queued", format_id(msg_id), to)
        return {"ok": True, "queue_id": format_id(msg_id)}, "%s: test message to <%s> queued" % (format_id(msg_id), to)

    # --- sessions -----------------------------------------------------------------------
    def cmd_unlock(self, sess, args):
        if not self.password or sess.trusted:
            return {"ok": True}, "nothing to unlock: changes are allowed here"
        sess.reading_password = True
        return {"ok": True, "password": True}, "type the console password (it is not echoed)"

    def _check_password(self, sess, line):
        sess.reading_password = False
        if _same(line, self.password):
            sess.unlocked = True
            log.info("unlocked")
            return True, "unlocked: changes allowed until lock or quit"
        log.warning("wrong password")
        return False, "error: wrong password"

    def cmd_lock(self, sess, args):
        sess.unlocked = False
        return {"ok": True}, "locked"

    def cmd_quit(self, sess, args):
        sess.unlocked = False
        sess.closing = True
        return {"ok": True}, "bye"

    cmd_exit = cmd_quit


def _same(a, b):
    """Compare without stopping at the first difference (no timing hint for guessing)."""
    a, b = a.encode(), b.encode()
    diff = len(a) ^ len(b)
    for i in range(min(len(a), len(b))):
        diff |= a[i] ^ b[i]
    return diff == 0


def _clip(text, n=40):
    return text if len(text) <= n else text[:n] + "..."
