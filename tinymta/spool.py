"""The fixed-size mail spool: a circular log of sectors on a block device.

Public API (other parts and outside checks rely on these names):

    spool = Spool(dev)                 mount and recover; a blank device is formatted
    Spool.format(dev)                  erase and start an empty spool
    w = spool.writer(sender, rcpts)    w.write(chunk); msg_id = w.commit(); w.abort()
    spool.messages()                   objects with .id .sender .recipients .size .arrived
    spool.read(msg_id)                 body chunks; SpoolCorrupt when a CRC does not match
    spool.ack(msg_id, rcpts)           recipients done (all done: the message is gone)
    spool.flush()                      pending ACKs made durable
    spool.stats()                      used/free bytes, message count, erase counts
    SpoolFull                          no room: the client gets 452, nothing is lost

How it works (SPOOL.md is the specification): records are appended to the head
sector through a write buffer and programmed in whole program units; a commit
pads to the next unit boundary and syncs, so no unit is ever programmed twice.
Messages are chains of fragments (FIRST..LAST, or one FULL) and may interleave
with other writers' fragments.  Delivery appends ACK records.  When free sectors
run down to the reserve, the tail sector's live fragments are copied forward,
a TAIL record moves the tail, and the sector is erased when the head comes
round to it again: strict rotation, so every sector is erased once a lap.
Mount never writes; the first write after mount opens a fresh sector (sealing),
so nothing is ever appended behind a region a power cut may have torn.

This module must not know SMTP, sockets or retry policy: it stores envelopes
and bytes.
"""

from tinymta import compat
from tinymta import spoolfmt as fmt
from tinymta.spoolfmt import FormatError, SpoolError, SpoolFull, SpoolCorrupt  # noqa: F401 (public names)
from tinymta.spoolscan import scan as scan_device
from tinymta.spoolreclaim import reclaim_one
from tinymta.spoolwriter import Writer, RELOC, META, DATA  # noqa: F401

log = compat.get_logger("spool")


class Message:
    __slots__ = ("id", "sender", "recipients", "all_recipients", "size", "arrived", "params")

    def __repr__(self):
        return "<Message %s from %s to %s, %d bytes>" % (fmt.format_id(self.id), self.sender,
                                                        ",".join(self.recipients), self.size)


class Spool:
    def __init__(self, dev, prog_unit=None, reserve=2, max_fill=0.75, chunk=None, write_buffer=None,
                 verify=None, ack_batch=None, readonly=False):
        self.dev = dev
        # rp2.Flash and esp32.Partition know nothing of needs_erase: real flash does need it.
        self.erases = getattr(dev, "needs_erase", True)
        self.readonly = readonly
        self._opts = (prog_unit, reserve, max_fill, chunk, write_buffer, verify, ack_batch, readonly)
        self._broken = False
        hint = prog_unit or getattr(dev, "prog_unit", 256)
        sc = scan_device(dev, hint)
        if sc.blank and readonly:
            raise FormatError("the device is blank: no spool has been written to it yet")
        if sc.blank:
            log.info("blank device: formatting a new spool")
            _write_format(dev, hint, 1, False)
            sc = scan_device(dev, hint)
        self.n, self.e, self.unit = sc.nsectors, sc.sector_size, sc.unit
        if self.n < reserve + 2:
            raise FormatError("a spool needs at least %d sectors, this device has %d" % (reserve + 2, self.n))
        self.reserve = reserve
        self.max_fill = max_fill
        self.chunk = min(chunk or min(max(self.unit, 4096), self.e - fmt.SECTOR_HDR) - fmt.REC_HDR, fmt.MAX_PAYLOAD)
        self.wb = write_buffer or min(self.e, max(self.unit, 4096))
        self.verify = self.erases if verify is None else verify
        self.ack_batch = ack_batch or max(8, (self.unit - fmt.REC_HDR) // fmt.ACK_ENTRY)
        self.scan = sc
        self.head_pos, self.head_seq, self.tail_seq = sc.head_pos, sc.head_seq, sc.tail_seq
        self.erase_counts = sc.erase_counts
        self._epoch = (sc.epoch + 1) & fmt.MASK32
        self._counter = 0
        self._msgs = {}
        self._live_bytes = 0
        for msg_id in sc.messages:
            offs, env_len, size, done, ack_seq = sc.messages[msg_id]
            media = size + env_len + fmt.REC_HDR * len(offs)
            # [fragment offsets, envelope length, body size, done mask, media bytes, seq of last partial ACK]
            self._msgs[msg_id] = [offs, env_len, size, done, media, ack_seq]
            self._live_bytes += media
        # the scan's own index is no longer needed (a second copy of it in a board's RAM); its
        # counters and damage list stay for `spool check` and the tests
        sc.messages = sc.last_record = sc.boot_ends = None
        self._writers = {}
        self._pending = []
        self._acks = []
        self._sealed = True      # the head found at mount is never appended to again
        self._copies_only = False
        self._copies_unsynced = False   # a reclaim copied records that are not yet synced
        self._off = self.e
        self._stamp = 0
        self._rec_seq = 0
        self._wbuf = bytearray(self.wb)
        self._wstart = 0
        self._wfill = 0
        self._dirty = False
        self._tail_written = self.tail_seq   # tail mark known to be on the medium
        self._tail_due = None                # a tail mark whose copies are durable, to record
        self._rh = bytearray(fmt.REC_HDR)
        self._rbuf = bytearray(self.unit if self.unit > 64 else 64)
        self.capacity = (self.n - reserve - 1) * (self.e - fmt.SECTOR_HDR)

    @staticmethod
    def format(dev, prog_unit=None, first_seq=1):
        """Erase the whole device and start an empty spool on it."""
        _write_format(dev, prog_unit or getattr(dev, "prog_unit", 256), first_seq, True)

    # --- writing ------------------------------------------------------------
    def _recover(self):
        """After a failed write: drop RAM state and mount again from the medium (never writes)."""
        for w in list(self._writers.values()) + self._pending:
            w.state = 2   # aborted: their data may not be on the medium
        o = self._opts
        self.__init__(self.dev, o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7])

    def can_accept(self, size_hint=0):
        """Whether a message of about size_hint bytes would be admitted now (for 452 at MAIL)."""
        need = size_hint + fmt.REC_HDR * (2 + size_hint // self.chunk) + 256
        return not self.readonly and self._live_bytes + need <= self.max_fill * self.capacity

    def writer(self, sender, recipients, size_hint=0, params=b""):
        if self.readonly:
            raise SpoolError("the spool is open read-only")
        if self._broken:
            self._recover()
        env = fmt.encode_envelope(sender, recipients, compat.unix_time(), params)
        need = size_hint + len(env) + fmt.REC_HDR * (1 + (size_hint + len(env)) // self.chunk)
        if self._live_bytes + need > self.max_fill * self.capacity:
            raise SpoolFull("spool is %d%% full" % (100 * self._live_bytes // self.capacity))
        self._counter += 1
        msg_id = (self._epoch << 32) | self._counter
        w = Writer(self, msg_id, env)
        self._writers[msg_id] = w
        return w

    def free_sectors(self):
        return self.n - 1 - fmt.seq_diff(self.head_seq, self.tail_seq)

    def _need(self, nbytes, level):
        """Make room for nbytes in the head sector; returns the room there.

        level is the number of free sectors that must remain before opening one:
        DATA keeps the whole reserve, META (ACK, TAIL) keeps one sector so a
        reclaim can always run, RELOC (inside a reclaim) may take the last.
        """
        if self._broken:
            raise SpoolError("an earlier flash write failed; this message must be sent again")
        if not self._sealed and self.e - self._off >= nbytes and (level == RELOC or not self._copies_only):
            return self.e - self._off
        want = self.reserve + 1 if level == DATA else level
        rounds = 0
        while self.free_sectors() < want:
            if level == RELOC or rounds >= self.n or not reclaim_one(self):
                raise SpoolFull("no free sector (%d free, %d reserved)" % (self.free_sectors(), self.reserve))
            rounds += 1
        self._open_sector()
        return self.e - self._off

    def _open_sector(self):
        if self._wfill:
            self._program(self._wfill)
        if self._dirty and self._copies_unsynced:   # copies are durable before their sector is reused
            self.dev.ioctl(3, 0)
            self._dirty = self._copies_unsynced = False
        # A sector opened with one free sector left makes the window span the whole device.
        # It takes relocation copies only, so that mount may ignore it (SPOOL.md, "Full window").
        self._copies_only = self.free_sectors() <= 1
        pos = (self.head_pos + 1) % self.n
        seq = (self.head_seq + 1) & fmt.MASK32
        if self.erases:
            self.dev.ioctl(6, pos)
        self.erase_counts[pos] += 1
        stamp = compat.random_u32() or 1
        fmt.pack_sector_header(self._wbuf, fmt.log2(self.e), fmt.log2(self.unit), self.n, seq, self.tail_seq,
                               self.erase_counts[pos], self._epoch, stamp)
        self.head_pos, self.head_seq = pos, seq
        self._wstart = pos * self.e
        self._wfill = self._off = fmt.SECTOR_HDR
        self._stamp, self._rec_seq, self._sealed = stamp, 0, False

    def _append(self, rtype, flags, msg_id, aux, payload, pcrc=None):
        """Append one record (room already ensured); returns its device offset."""
        if pcrc is None:
            pcrc = compat.crc32(payload)
        at = self.head_pos * self.e + self._off
        fmt.pack_record_header(self._rh, 0, rtype, flags, len(payload), self._stamp, self._rec_seq, msg_id, aux,
                               pcrc)
        self._put(self._rh)
        self._put(payload)
        self._off += fmt.REC_HDR + len(payload)
        self._rec_seq += 1
        return at

    def _put(self, data):
        mv = memoryview(data)
        i = 0
        while i < len(mv):
            k = min(self.wb - self._wfill, len(mv) - i)
            self._wbuf[self._wfill:self._wfill + k] = mv[i:i + k]
            self._wfill += k
            i += k
            if self._wfill == self.wb:
                self._program(self.wb)

    def _program(self, fill):
        """Program the write buffer's first `fill` bytes, rounded up to whole units of 0xFF filler."""
        length = -(-fill // self.unit) * self.unit
        buf = self._wbuf
        for i in range(fill, length):
            buf[i] = 0xFF
        mv = memoryview(buf)[:length]
        blk, off = self._wstart // self.e, self._wstart % self.e
        self.dev.writeblocks(blk, mv, off)
        self._dirty = True
        if self.verify:
            back = bytearray(length)
            self.dev.readblocks(blk, back, off)
            if back != mv:
                # What the buffer held (fragments, ACKs, copies) did not reach the medium: from
                # here on the spool is as after a power cut, and recovers the same way.
                self._broken = True
                log.error("flash program verify failed at sector %d offset %d; recovering", blk, off)
                raise SpoolError("flash program verify failed at sector %d offset %d" % (blk, off))
        self._wstart += length
        self._wfill = 0

    def _sync(self):
        if self._broken:
            raise SpoolError("an earlier flash write failed; this message must be sent again")
        if self._tail_due is not None:
            self._need(fmt.REC_HDR, META)
            self._append(fmt.TAIL, 0, 0, self._tail_due, b"")
            self._tail_written, self._tail_due = self._tail_due, None
        if self._acks:
            self._write_acks(META)
        if self._wfill:
            if not self._sealed:
                gap = fmt.pad_length(self._off, self.unit)
                if gap and self.e - self._off >= gap:
                    self._append(fmt.PAD, 0, 0, 0, bytes(gap - fmt.REC_HDR))
                elif gap:
                    self._sealed = True   # the sector's last unit: nothing more fits after it
            if self._wfill:
                self._program(self._wfill)
        if self._dirty:
            self.dev.ioctl(3, 0)
            self._dirty = self._copies_unsynced = False
        for w in self._pending:
            self._msgs[w.id] = [w.offs, w.env_len, w.size, 0, w.media, None]
        self._pending = []
        if self.tail_seq != self._tail_written:
            self._tail_due = self.tail_seq   # copies are durable now: the next sync records the tail

    def _write_acks(self, level):
        entries, self._acks = self._acks, []
        per = max(1, min(fmt.MAX_PAYLOAD, self.e - fmt.SECTOR_HDR - fmt.REC_HDR) // fmt.ACK_ENTRY)
        i = 0
        try:
            while i < len(entries):
                room = self._need(fmt.REC_HDR + fmt.ACK_ENTRY, level)
                k = min(per, len(entries) - i, (room - fmt.REC_HDR) // fmt.ACK_ENTRY)
                self._append(fmt.ACK, 0, 0, k, fmt.encode_ack(entries[i:i + k]))
                for j in range(i, i + k):
                    m = self._msgs.get(entries[j][0])
                    if m is not None:
                        m[5] = self.head_seq
                i += k
        except SpoolFull:
            self._acks = entries[i:] + self._acks   # never drop a delivery: it waits for room
            raise

    # --- delivery -----------------------------------------------------------
    def ack(self, msg_id, recipients):
        """Mark recipients (addresses or indexes) delivered or bounced; all done removes the message."""
        if self._broken:
            self._recover()
        m = self._msgs.get(msg_id)
        if m is None or self.readonly:
            raise SpoolError("no message %s in the spool" % fmt.format_id(msg_id) if m is None
                             else "the spool is open read-only")
        rcpts = self._envelope(msg_id)[1]
        bits = 0
        for r in recipients:
            if isinstance(r, int):
                i = r
            elif r in rcpts:
                i = rcpts.index(r)
            else:
                raise SpoolError("%s is not a recipient of %s" % (r, fmt.format_id(msg_id)))
            bits |= 1 << i
        done = m[3] | bits
        if done == (1 << len(rcpts)) - 1:
            self._acks.append((msg_id, fmt.ACK_ALL, 0))
            del self._msgs[msg_id]
            self._live_bytes -= m[4]
        else:
            for word in range((len(rcpts) + 31) // 32):
                if (bits >> (32 * word)) & fmt.MASK32:
                    self._acks.append((msg_id, 32 * word, (done >> (32 * word)) & fmt.MASK32))
            m[3] = done
        if len(self._acks) >= self.ack_batch:
            self._sync()

    def flush(self):
        """Make every ACK so far durable."""
        if self._broken:
            self._recover()
        self._sync()

    def close(self):
        self._sync()                # (it syncs the device itself when anything was written)

    # --- reading ------------------------------------------------------------
    def _read(self, at, buf):
        """Bytes at device offset `at`; those not programmed yet come from the write buffer."""
        end = at + len(buf)
        lo, hi = self._wstart, self._wstart + self._wfill
        if self._wfill == 0 or end <= lo or at >= hi:
            self.dev.readblocks(at // self.e, buf, at % self.e)
            return
        mv = memoryview(buf)
        k = lo - at if lo > at else 0
        if k:
            self.dev.readblocks(at // self.e, mv[:k], at % self.e)
        mv[k:] = self._wbuf[at + k - lo:end - lo]

    def _stream(self, offs, skip):
        """Yield the verified payload bytes of a fragment chain, after skipping `skip` bytes."""
        hdr = bytearray(fmt.REC_HDR)
        for i in range(len(offs)):
            self._read(offs[i], hdr)
            r = fmt.parse_record_header(hdr)
            if r is None:
                raise SpoolCorrupt("record header at %d fails its CRC" % offs[i])
            length, pcrc = r[2], r[7]
            if len(self._rbuf) < length:
                self._rbuf = bytearray(length)
            mv = memoryview(self._rbuf)[:length]
            if length:
                self._read(offs[i] + fmt.REC_HDR, mv)
            if compat.crc32(mv) != pcrc:
                raise SpoolCorrupt("fragment %d at %d fails its payload CRC" % (i, offs[i]))
            if skip >= length:
                skip -= length
                continue
            yield bytes(mv[skip:])
            skip = 0

    def _envelope(self, msg_id):
        m = self._msgs[msg_id]
        env = bytearray()
        for part in self._stream(m[0], 0):
            env.extend(part)
            if len(env) >= m[1]:
                break
        return fmt.decode_envelope(bytes(env[:m[1]]))

    def read(self, msg_id):
        m = self._msgs.get(msg_id)
        if m is None:
            raise SpoolError("no message %s in the spool" % fmt.format_id(msg_id))
        return self._stream(m[0], m[1])

    def message(self, msg_id):
        sender, rcpts, arrived, params = self._envelope(msg_id)
        m = self._msgs[msg_id]
        msg = Message()
        msg.id, msg.sender, msg.all_recipients, msg.arrived, msg.params, msg.size = \
            msg_id, sender, rcpts, arrived, params, m[2]
        msg.recipients = [rcpts[i] for i in range(len(rcpts)) if not (m[3] >> i) & 1]
        return msg

    def messages(self):
        for msg_id in sorted(self._msgs):
            yield self.message(msg_id)

    def __contains__(self, msg_id):
        return msg_id in self._msgs

    def __len__(self):
        return len(self._msgs)

    def stats(self):
        used = self._live_bytes
        return {"capacity": self.capacity, "used": used, "free": max(0, self.capacity - used),
                "messages": len(self._msgs), "sectors": self.n, "sector_size": self.e, "prog_unit": self.unit,
                "free_sectors": self.free_sectors(), "reserve": self.reserve, "head_seq": self.head_seq,
                "tail_seq": self.tail_seq, "epoch": self._epoch, "erase_counts": list(self.erase_counts),
                "pending_acks": len(self._acks)}


def _write_format(dev, unit, first_seq, wipe):
    """Write an empty spool: sector headers cleared (wipe: every sector; else sector 0), then one header."""
    n, e = dev.ioctl(4, 0), dev.ioctl(5, 0) or 512
    if unit > e or e % unit or unit > 65536 or unit & (unit - 1):
        raise FormatError("program unit %d must be a power of two of at most 65536 dividing the %d-byte sector"
                          % (unit, e))
    gap = fmt.pad_length(fmt.SECTOR_HDR, unit)
    length = -(-(fmt.SECTOR_HDR + gap) // unit) * unit
    buf = bytearray(b"\xff" * length)
    for blk in range(n if wipe else 1):
        if getattr(dev, "needs_erase", True):
            dev.ioctl(6, blk)
        else:   # a file does not erase: overwrite the header so no old sector stays valid
            dev.writeblocks(blk, buf, 0)
    stamp = compat.random_u32() or 1
    fmt.pack_sector_header(buf, fmt.log2(e), fmt.log2(unit), n, first_seq, first_seq, 0, 1, stamp)
    if gap:
        body = fmt.SECTOR_HDR + fmt.REC_HDR
        fmt.pack_record_header(buf, fmt.SECTOR_HDR, fmt.PAD, 0, gap - fmt.REC_HDR, stamp, 0, 0, 0,
                               compat.crc32(bytes(buf[body:fmt.SECTOR_HDR + gap])))
    dev.writeblocks(0, buf, 0)
    dev.ioctl(3, 0)
