"""One message being written to the spool: its body streams to the log in fragments.

A Writer buffers at most one fragment's payload (Spool.chunk bytes) and hands
each full buffer to the spool as a FIRST/MIDDLE record; commit() writes the
LAST (or a single FULL) record and, by default, syncs.  Room levels say how
many free sectors a request must leave (Spool._need).

This module must not know the on-media layout beyond record types, nor SMTP.
"""
from array import array

from tinymta import spoolfmt as fmt
from tinymta.spoolfmt import SpoolError, SpoolFull

_OPEN, _DONE, _DEAD = 0, 1, 2
RELOC, META, DATA = 1, 2, 3   # room request levels: free sectors each must leave (see Spool._need)


class Writer:
    """One message being written; its body streams to the spool in fragments."""

    def __init__(self, spool, msg_id, envelope):
        self.spool = spool
        self.id = msg_id
        self.env_len = len(envelope)
        self.buf = bytearray(spool.chunk)
        self.fill = 0
        self.offs = array("I")
        self.media = 0
        self.size = 0
        self.state = _OPEN
        self._take(envelope)

    def _take(self, data):
        mv = memoryview(data)
        i = 0
        while i < len(mv):
            k = min(len(self.buf) - self.fill, len(mv) - i)
            self.buf[self.fill:self.fill + k] = mv[i:i + k]
            self.fill += k
            i += k
            if self.fill == len(self.buf):
                self._emit(False)

    def _emit(self, final):
        sp = self.spool
        data = memoryview(self.buf)
        pos = 0
        while True:
            left = self.fill - pos
            room = sp._need(fmt.REC_HDR + min(left, 64), DATA) - fmt.REC_HDR
            n = min(left, room)
            end = pos + n == self.fill
            if not self.offs:
                rtype, aux = (fmt.FULL if final and end else fmt.FIRST), self.env_len
            else:
                rtype, aux = (fmt.LAST if final and end else fmt.MIDDLE), len(self.offs)
            self.offs.append(sp._append(rtype, 0, self.id, aux, data[pos:pos + n]))
            self.media += fmt.REC_HDR + n
            sp._live_bytes += fmt.REC_HDR + n
            pos += n
            if end:
                break
        self.fill = 0

    def write(self, chunk):
        if self.state != _OPEN:
            raise SpoolError("write to a message that is already committed or aborted")
        self.size += len(chunk)
        try:
            self._take(chunk)
        except SpoolFull:
            self.abort()
            raise

    def commit(self, sync=True):
        """Store the end of the message; with sync (the default) return only once it is durable."""
        if self.state != _OPEN:
            raise SpoolError("commit of a message that is already committed or aborted")
        try:
            self._emit(True)
        except SpoolFull:
            self.abort()
            raise
        self.state = _DONE
        sp = self.spool
        sp._writers.pop(self.id, None)
        sp._pending.append(self)
        if sync:
            sp._sync()
        return self.id

    def abort(self):
        if self.state == _OPEN:
            self.state = _DEAD
            self.spool._writers.pop(self.id, None)
            self.spool._live_bytes -= self.media


