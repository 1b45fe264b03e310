"""Mount-time recovery of a spool: find head and tail, walk the records, rebuild the index.

``scan(dev)`` reads a block device and returns a ``Scan``: the live window, the
complete and intact messages (fragment locations, envelope length, size,
recipients already done), wear counters and the damage it found.  It never
writes: mounting twice without writes in between gives the same result, and a
power cut during recovery cannot make things worse.

The rules (SPOOL.md, "Recovery"): a sector counts only with a valid header; the
newest header by serial-number arithmetic is the head; the live window runs
from the highest tail mark (sector headers and TAIL records) to the head; in
each sector the walk stops at the first record that fails its CRC, carries
another sector's stamp or breaks the record sequence; a message counts only
when every fragment from FIRST to LAST is present in the window and every
payload CRC matches.

This module must not know about writers, ACK batching or reclaim policy.
"""
from array import array

from tinymta import spoolfmt as fmt
from tinymta.compat import crc32

_ERASED32 = b"\xff" * fmt.REC_HDR


class Scan:
    def __init__(self, nsectors, sector_size):
        self.nsectors = nsectors
        self.sector_size = sector_size
        self.unit = 0
        self.blank = False
        self.head_pos = 0
        self.head_seq = 0
        self.tail_seq = 0
        self.epoch = 0
        self.erase_counts = [0] * nsectors
        self.messages = {}      # msg_id -> [record offsets, env_len, size, done mask, seq of last ACK]
        self.records = 0
        self.torn = 0           # records cut short by an interrupted write
        self.incomplete = 0     # fragment chains without their end: never committed
        self.corrupt = 0        # complete messages whose payload CRC failed
        self.damage = []        # human-readable notes
        self.boot_ends = {}     # seqs of sectors that were the head when a boot ended
        self.last_record = {}   # seq -> offset of the last record the walk reached there
        self.originals = 0      # records in the head sector other than relocation copies

    def seq_of(self, pos):
        return (self.head_seq - ((self.head_pos - pos) % self.nsectors)) & fmt.MASK32

    def pos_of(self, seq):
        return (self.head_pos - fmt.seq_diff(self.head_seq, seq)) % self.nsectors


def read_header_at(dev, sector_size, off, buf):
    dev.readblocks(off // sector_size, buf, off % sector_size)
    return fmt.parse_record_header(buf)


def payload_crc(dev, sector_size, off, length, chunk):
    """CRC-32 of the payload of the record at off, read through the scratch buffer chunk."""
    crc = 0
    pos = off + fmt.REC_HDR
    end = pos + length
    mv = memoryview(chunk)
    while pos < end:
        n = min(len(chunk), end - pos)
        part = mv[:n]
        dev.readblocks(pos // sector_size, part, pos % sector_size)
        crc = crc32(part, crc)
        pos += n
    return crc


def _blank(dev, nsectors, sector_size, unit):
    """True when the device is erased, but for an interrupted format's first program unit."""
    buf = bytearray(min(sector_size, 4096))
    ff = b"\xff" * len(buf)
    gap = fmt.pad_length(fmt.SECTOR_HDR, unit)
    skip = -(-(fmt.SECTOR_HDR + gap) // unit) * unit   # the format's one program
    for blk in range(nsectors):
        off = 0
        while off < sector_size:
            dev.readblocks(blk, buf, off)
            if blk == 0 and off < skip:
                lo = skip - off
                if lo < len(buf) and buf[lo:] != ff[lo:]:
                    return False
            elif buf != ff:
                return False
            off += len(buf)
    return True


def _find_head(dev, scan, hbuf, ignore):
    n, e = scan.nsectors, scan.sector_size
    headers = [None] * n
    head = None
    for pos in range(n):
        if pos == ignore:
            continue
        dev.readblocks(pos, hbuf, 0)
        h = fmt.parse_sector_header(hbuf)
        if h is None:
            continue
        if (1 << h.log2_sector) != e:
            raise fmt.FormatError("sectors are %d bytes but the device's blocks are %d bytes"
                                  % (1 << h.log2_sector, e))
        if h.nsectors != n:
            raise fmt.FormatError("the spool has %d sectors but the device holds %d (truncated or resized?)"
                                  % (h.nsectors, n))
        headers[pos] = h
        if head is None or fmt.seq_after(h.seq, headers[head].seq):
            head = pos
    return headers, head


def scan(dev, unit_hint=256, ignore=None):
    sc, again = _scan_pass(dev, unit_hint, ignore)
    if again is not None:       # a second pass at most, with that head ignored (no recursion)
        sc = _scan_pass(dev, unit_hint, again)[0]
    return sc


def _scan_pass(dev, unit_hint, ignore):
    """One pass; (Scan, None), or (Scan, head) when that head sector must be ignored and the
    scan done again (see below)."""
    n = dev.ioctl(4, 0)
    e = dev.ioctl(5, 0) or 512
    scan = Scan(n, e)
    hbuf = bytearray(fmt.SECTOR_HDR)
    headers, head = _find_head(dev, scan, hbuf, ignore)
    if head is None:
        if _blank(dev, n, e, unit_hint):
            scan.blank = True
            scan.unit = unit_hint
            return scan, None
        raise fmt.FormatError("no tinymta spool here: no valid sector header and the device is not blank")
    hh = headers[head]
    scan.unit = 1 << hh.log2_unit
    scan.head_pos, scan.head_seq = head, hh.seq
    tail = hh.tail_seq
    known = [h.erase_count for h in headers if h is not None]
    top = max(known)
    for pos in range(n):
        h = headers[pos]
        scan.erase_counts[pos] = h.erase_count if h is not None else top
        if h is not None:
            if h.epoch > scan.epoch:
                scan.epoch = h.epoch
            if fmt.seq_after(h.tail_seq, tail) and not fmt.seq_after(h.tail_seq, hh.seq):
                tail = h.tail_seq
    if fmt.seq_diff(hh.seq, tail) >= n:
        scan.damage.append("live window longer than the spool; oldest sectors ignored")
        tail = (hh.seq - n + 1) & fmt.MASK32
    # Leading sectors of the window without a valid header hold nothing readable (an erase for
    # reuse began there): the tail moves past them.
    while tail != hh.seq:
        h = headers[scan.pos_of(tail)]
        if h is not None and h.seq == tail:
            break
        tail = (tail + 1) & fmt.MASK32
    found = {}
    dead = {}
    partial = {}
    s = tail
    last = None
    while True:
        pos = scan.pos_of(s)
        h = headers[pos]
        if h is not None and h.seq == s:
            if last is not None and last.epoch != h.epoch:
                scan.boot_ends[last.seq] = True     # a boot ended with that sector as its head
            last = h
        if h is None or h.seq != s:
            if s != tail:   # the oldest may be mid-erase: normal
                scan.damage.append("sector %d (seq %d) of the live window has no valid header" % (pos, s))
        else:
            tail = _walk(dev, scan, pos, h, found, dead, partial, tail)
        if s == hh.seq:
            break
        s = (s + 1) & fmt.MASK32
    scan.tail_seq = tail
    scan.boot_ends[hh.seq] = True
    if ignore is None and fmt.seq_diff(hh.seq, tail) == n - 1 and scan.originals == 0:
        # Full window: the head was opened by a reclaim with one sector left and holds only
        # copies of records that are still in the tail sector.  Ignore it; it is free again.
        return scan, head
    _finish(dev, scan, found, partial)
    return scan, None


def _walk(dev, scan, pos, h, found, dead, partial, tail):
    e = scan.sector_size
    rbuf = bytearray(fmt.REC_HDR)
    off = fmt.SECTOR_HDR
    expect = None
    base = pos * e
    while off + fmt.REC_HDR <= e:
        r = read_header_at(dev, e, base + off, rbuf)
        if r is None or r[3] != h.stamp or (expect is not None and r[4] != expect) \
                or off + fmt.REC_HDR + r[2] > e:
            if r is not None and r[3] == h.stamp:
                scan.torn += 1
                scan.damage.append("sector %d: record at %d breaks the chain" % (pos, off))
            _lost_after(dev, scan, pos, h, off, rbuf)
            break
        rtype, _flags, length, _stamp, rec_seq, msg_id, aux, pcrc = r
        expect = (rec_seq + 1) & fmt.MASK32
        if rtype == fmt.ACK:
            body = bytearray(length)
            if length:
                dev.readblocks(pos, body, off + fmt.REC_HDR)
            entries = fmt.decode_ack(body, aux) if crc32(body) == pcrc else None
            if entries is None:
                scan.torn += 1
                scan.damage.append("sector %d: ACK record at %d is torn" % (pos, off))
                break
            for mid, b, mask in entries:
                if b == fmt.ACK_ALL:
                    dead[mid] = True
                    found.pop(mid, None)
                    partial.pop(mid, None)
                elif mid not in dead:
                    old = partial.get(mid)
                    partial[mid] = ((old[0] if old else 0) | (mask << b), h.seq)
        elif rtype == fmt.TAIL:
            if fmt.seq_after(aux, tail) and not fmt.seq_after(aux, scan.head_seq):
                tail = aux
        elif rtype != fmt.PAD and msg_id not in dead:
            m = found.get(msg_id)
            if m is None:
                m = found[msg_id] = [{}, None, None]
            idx = 0 if rtype in (fmt.FULL, fmt.FIRST) else aux
            copies = m[0].get(idx)
            if copies is None:
                m[0][idx] = [(base + off, length, pcrc)]
            else:   # a relocation copy: keep every one, the newest intact copy wins
                copies.append((base + off, length, pcrc))
            if rtype in (fmt.FULL, fmt.FIRST):
                m[1] = aux
            if rtype == fmt.FULL:
                m[2] = 0
            elif rtype == fmt.LAST:
                m[2] = aux
        scan.records += 1
        scan.last_record[h.seq] = base + off
        if h.seq == scan.head_seq and rtype != fmt.PAD and rtype != fmt.ACK and not _flags & fmt.RELOCATED:
            scan.originals += 1
        off += fmt.REC_HDR + length
    return tail


def _lost_after(dev, scan, pos, h, off, rbuf):
    """Report records cut off behind a damaged one.

    A power cut leaves at most one torn region at the end of what a sector
    holds, and nothing of the same opening is ever written after it (sealing).
    So a valid record of this sector's stamp at a later program-unit boundary
    means the walk stopped at decayed bytes, and what follows is lost.
    """
    e, unit = scan.sector_size, scan.unit
    at = off - off % unit + unit
    while at + fmt.REC_HDR <= e:
        r = read_header_at(dev, e, pos * e + at, rbuf)
        if r is not None and r[3] == h.stamp:
            scan.corrupt += 1
            scan.damage.append("sector %d: damaged record at %d; the records after it (from %d) are lost"
                               % (pos, off, at))
            return
        at += unit


def _finish(dev, scan, found, partial):
    e = scan.sector_size
    chunk = bytearray(min(e, 4096))
    window = fmt.seq_diff(scan.head_seq, scan.tail_seq)
    for msg_id in found:
        frags, env_len, last = found[msg_id]
        if env_len is None or last is None or len(frags) != last + 1:
            scan.incomplete += 1
            continue
        offs = array("I")
        total = 0
        corrupt = torn = False
        for i in range(last + 1):
            copies = frags.get(i)
            if copies is None:          # a fragment index never written: incomplete
                break
            chosen = None
            for j in range(len(copies) - 1, -1, -1):
                off, length, pcrc = copies[j]
                sq = scan.seq_of(off // e)
                if fmt.seq_diff(scan.head_seq, sq) > window:
                    continue        # in a sector the tail has already passed
                if payload_crc(dev, e, off, length, chunk) == pcrc:
                    chosen = copies[j]
                    break
                if sq in scan.boot_ends and scan.last_record.get(sq) == off:
                    torn = True     # the last thing a boot wrote, cut short: never committed
                else:
                    corrupt = True
            if chosen is None:
                break
            offs.append(chosen[0])
            total += chosen[1]
        if len(offs) != last + 1 or total < env_len:
            if torn and not corrupt:
                scan.torn += 1
                scan.incomplete += 1
            elif corrupt:
                scan.corrupt += 1
                scan.damage.append("message %s: payload CRC mismatch, not delivered" % fmt.format_id(msg_id))
            else:
                scan.incomplete += 1
            continue
        p = partial.get(msg_id)
        scan.messages[msg_id] = [offs, env_len, total - env_len, p[0] if p else 0, p[1] if p else None]
