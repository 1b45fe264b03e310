"""Message intake for the server: from the end of the envelope to a durable 250.

A mixin of Server (single inheritance, MicroPython-safe): it opens a spool writer when DATA
starts, passes body chunks through the submission fix-ups into the writer, and at the end of
DATA commits without syncing; the server's loop then makes every message that ended in the
same pass durable with one sync (group commit) and only then sends each its 250.

This module must not know sockets or the SMTP grammar: it works on Connection objects and
tells their Session its verdict.
"""
from tinymta import compat
from tinymta.fixup import HeaderFixer
from tinymta.spoolfmt import SpoolError, SpoolFull, format_id

log = compat.get_logger("smtpd")

R_STORAGE = b"452 4.3.1 Insufficient system storage"
R_LOCAL_ERROR = b"451 4.3.0 Local error in processing; try again later"


def text(b):
    return compat.decode_utf8_replace(b)


class Intake:
    def _on_data_start(self, c, sender, rcpts):
        c.sender = text(sender)
        c.rcpts = []
        for r in rcpts:
            r = self._postmaster(text(r))
            if r not in c.rcpts:            # postmaster and its admin given both: deliver once
                c.rcpts.append(r)
        c.failed = None
        try:
            c.writer = self.spool.writer(c.sender, c.rcpts, c.size_hint, c.params)
        except SpoolFull:
            c.failed = R_STORAGE
            return
        qid = format_id(c.writer.id)
        s = c.session
        received = b"Received: from %s ([%s])\r\n\tby %s (tinymta) with %s id %s%s;\r\n\t%s\r\n" % (
            bytes(s.helo_name or b"unknown"), c.ip.encode(), self.hostname.encode(), s.protocol(),
            qid.encode(), (b"\r\n\tfor <" + rcpts[0] + b">") if len(rcpts) == 1 else b"",
            compat.rfc5322_date(compat.unix_time()).encode())
        c.fixer = HeaderFixer(received, c.sender, self.hostname, qid, compat.unix_time())

    def _postmaster(self, rcpt):
        """postmaster (bare, or at our hostname) goes to server.postmaster when one is set:
        RFC 5321 §4.5.1 mail must reach a person, not loop back to this host and bounce."""
        admin = self.cfg.server.postmaster
        if admin:
            low = rcpt.lower()
            if low == "postmaster" or low == "postmaster@" + self.hostname.lower():
                log.info("recipient <%s> -> server.postmaster <%s>", rcpt, admin)
                return admin
        return rcpt

    def _store(self, c, data):
        if c.writer is None or not data:
            return
        try:
            c.writer.write(data)
        except SpoolFull:
            c.failed = R_STORAGE
            c.writer = None
        except SpoolError as e:
            log.error("%s: spool write failed: %s", c.name(), e)
            c.failed = R_LOCAL_ERROR
            self._drop_message(c)

    def _on_body(self, c, chunk):
        if c.writer is not None:
            self._store(c, c.fixer.feed(chunk))

    def _on_data_end(self, c):
        if c.writer is not None:
            self._store(c, c.fixer.finish())
        if c.writer is None:
            self._refuse(c, c.failed or R_LOCAL_ERROR)
            return
        try:
            c.writer.commit(False)      # durable at the group commit below
        except SpoolFull:
            self._refuse(c, R_STORAGE)
            return
        except SpoolError as e:
            log.error("%s: spool commit failed: %s", c.name(), e)
            self._refuse(c, R_LOCAL_ERROR)
            return
        # committed: it is the spool's now (no abort can take it back), whatever the client does
        self.to_commit.append((c, c.writer, c.fixer.added))
        c.writer = c.fixer = None

    def _refuse(self, c, reply):
        log.warning("%s: from=<%s> to=<%s> refused: %s", c.name(), c.sender, ",".join(c.rcpts), text(reply))
        self.stats["rejected"] += 1
        self._drop_message(c)
        c.session.message_failed(reply)

    def _group_commit(self):
        batch, self.to_commit = self.to_commit, []
        try:
            self.spool.flush()
            reply = None
        except SpoolError as e:
            log.error("spool sync failed: %s", e)
            reply = R_LOCAL_ERROR
        for c, w, added in batch:
            try:
                self._verdict(c, w, added, reply)
            except Exception as e:  # one client's failure (a reset under the 250) never stops the loop
                self._fail(c, e)

    def _verdict(self, c, w, added, reply):
        """The 250 (or 451) for one message of a group commit, and the relay told of it."""
        stored = reply is None and w.id in self.spool
        gone = c.sock is None
        if stored:
            qid = format_id(w.id)
            # A client gone before its 250 may send it again (a duplicate, never a loss): the
            # message is durable and must be relayed all the same.
            log.info("%s: client=%s, from=<%s>, to=<%s>, size=%d%s, status=queued%s", qid, c.name(),
                     c.sender, ",".join(c.rcpts), w.size, (", added=" + "+".join(added)) if added else "",
                     " (the client left before the reply)" if gone else "")
            self.stats["received"] += 1
            if self.on_queued is not None:
                self.on_queued(w.id)
        if gone:
            return
        if stored:
            c.session.message_accepted(qid)
        else:
            self._refuse(c, reply or R_LOCAL_ERROR)
        self._events(c)             # pipelined commands waiting behind the verdict

    def _drop_message(self, c):
        if c.writer is not None:
            c.writer.abort()
        c.writer = None
        c.fixer = None

