"""Reclaiming the spool's tail sector: copy its live fragments forward, then move the tail.

Order matters for power loss (SPOOL.md, "Reclaim"): the copies, and the ACK
state that lived in the tail sector, are appended; the tail moves in RAM only.
The new tail reaches the medium in the next sector header and in a TAIL record
appended after the next sync, and the old sector is erased only when the head
comes round to it, after a sync.  So the tail mark can never become durable
before the copies, and a cut at any point leaves either both the originals and
the copies (merged by message id and fragment index at mount) or the copies.
A reclaim never needs more than one free sector: what it writes is at most
what the sector held.

This module must not know SMTP or queue policy; it works on a mounted Spool's
private state and is split out only to keep spool.py small.
"""
from tinymta import compat
from tinymta import spoolfmt as fmt
from tinymta.spoolscan import read_header_at

log = compat.get_logger("spool")


def reclaim_one(sp):
    """Free the tail sector; False when it cannot be freed (it is the head)."""
    e = sp.e
    tail_pos = (sp.head_pos - fmt.seq_diff(sp.head_seq, sp.tail_seq)) % sp.n
    if tail_pos == sp.head_pos:
        return False
    lo, hi = tail_pos * e, (tail_pos + 1) * e
    owners = [m[0] for m in sp._msgs.values()]
    owners.extend(w.offs for w in sp._writers.values())
    owners.extend(w.offs for w in sp._pending)
    rh = bytearray(fmt.REC_HDR)
    buf = bytearray(0)
    moved = 0
    for offs in owners:
        for i in range(len(offs)):
            off = offs[i]
            if off < lo or off >= hi:
                continue
            r = read_header_at(sp.dev, e, off, rh)
            if r is None:
                log.error("live record at %d fails its header CRC; it cannot be moved", off)
                continue
            length = r[2]
            if len(buf) < length:
                buf = bytearray(length)
            mv = memoryview(buf)[:length]
            if length:
                at = off + fmt.REC_HDR
                sp.dev.readblocks(at // e, mv, at % e)
            sp._need(fmt.REC_HDR + length, 1)  # RELOC
            offs[i] = sp._append(r[0], r[1] | fmt.RELOCATED, r[5], r[6], mv, r[7])
            moved += 1
    # ACK records for partly delivered messages that live in this sector: state them again.
    # Only those: the application's queued ACKs wait for the next sync, so what a reclaim
    # writes stays bounded by what the sector held.
    tail_seq = sp.tail_seq
    queued, sp._acks = sp._acks, []
    try:
        for msg_id in sp._msgs:
            m = sp._msgs[msg_id]
            if m[5] is not None and not fmt.seq_after(m[5], tail_seq):
                done = m[3]
                word = 0
                while done >> (32 * word):
                    mask = (done >> (32 * word)) & fmt.MASK32
                    if mask:
                        sp._acks.append((msg_id, 32 * word, mask))
                    word += 1
        if sp._acks:
            sp._write_acks(1)  # RELOC
    finally:
        sp._acks = queued + sp._acks
    sp.tail_seq = (tail_seq + 1) & fmt.MASK32
    sp._copies_unsynced = True
    log.debug("reclaimed sector %d: %d fragments moved", tail_pos, moved)
    return True
