"""The spool's on-media format, version 1: byte layouts, CRCs and the envelope codec.

SPOOL.md at the top of the repository is the written specification; this module
is its executable form.  All integers are little-endian.

Sector header (40 bytes, at the start of every sector, written in the same
program as the sector's first records):

    0  4  magic        b"TMS1"
    4  1  version      1
    5  1  log2_sector  sector (erase block) size
    6  1  log2_unit    program unit
    7  1  flags        0
    8  4  nsectors     sectors in the spool (detects truncation)
   12  4  seq          generation: +1 every time any sector is opened (serial arithmetic)
   16  4  tail_seq     oldest live sector seq when this sector was opened
   20  4  erase_count  times this physical sector has been opened
   24  4  epoch        mount generation; high half of message ids
   28  4  stamp        random per opening; every record in the sector repeats it
   32  4  reserved     0
   36  4  crc          CRC-32 of bytes 0..35

Record header (32 bytes), followed by ``length`` payload bytes:

    0  1  type         FULL FIRST MIDDLE LAST ACK TAIL PAD (0x00 and 0xFF never valid)
    1  1  flags        bit0 RELOCATED
    2  2  length       payload bytes
    4  4  stamp        must equal the sector header's stamp
    8  4  rec_seq      +1 per record within a sector
   12  8  msg_id       (epoch << 32) | counter; unchanged by relocation
   20  4  aux          FIRST/FULL: envelope length; MIDDLE/LAST: fragment index;
                       ACK: entry count; TAIL: new tail seq
   24  4  payload_crc  CRC-32 of the payload
   28  4  crc          CRC-32 of bytes 0..27

This module must not know about devices, sectors in use or messages in RAM.
"""
import struct

from tinymta.compat import crc32

MAGIC = b"TMS1"
VERSION = 1
SECTOR_HDR = 40
REC_HDR = 32
MAX_PAYLOAD = 0xFFFF    # the record length field is 16 bits

FULL = 1
FIRST = 2
MIDDLE = 3
LAST = 4
ACK = 5
TAIL = 6
PAD = 7

RELOCATED = 1

ACK_ENTRY = 16          # msg_id u64, base u32, mask u32
ACK_ALL = 0xFFFFFFFF    # base value meaning "every recipient done: the message is gone"

_SECTOR_FMT = "<4sBBBBIIIIIIII"
_REC_FMT = "<BBHIIQII"
MASK32 = 0xFFFFFFFF
# MicroPython's struct raises ValueError on short buffers; CPython raises struct.error.
_DECODE_ERRORS = (ValueError, IndexError, UnicodeError) + ((struct.error,) if hasattr(struct, "error") else ())


class SpoolError(Exception):
    """Base of every spool error."""


class SpoolFull(SpoolError):
    """No room for this message now (answer 452 4.3.1); room returns as mail is delivered."""


class SpoolCorrupt(SpoolError):
    """Stored bytes fail their CRC: the message must not be delivered."""


class FormatError(SpoolError):
    """Bytes that are not (this version of) a tinymta spool; the message says what was found."""


def seq_after(a, b):
    """True when serial number a is later than b (RFC 1982 arithmetic on 32 bits)."""
    d = (a - b) & MASK32
    return d != 0 and d < 0x80000000


def seq_diff(a, b):
    """a - b for serial numbers a at or after b."""
    return (a - b) & MASK32


def log2(n):
    k = 0
    while (1 << k) < n:
        k += 1
    if (1 << k) != n:
        raise FormatError("%d is not a power of two" % n)
    return k


def pack_sector_header(buf, log2_sector, log2_unit, nsectors, seq, tail_seq, erase_count, epoch, stamp):
    struct.pack_into(_SECTOR_FMT, buf, 0, MAGIC, VERSION, log2_sector, log2_unit, 0, nsectors,
                     seq & MASK32, tail_seq & MASK32, erase_count & MASK32, epoch & MASK32, stamp, 0, 0)
    struct.pack_into("<I", buf, 36, crc32(bytes(buf[0:36])))


class SectorHeader:
    __slots__ = ("log2_sector", "log2_unit", "nsectors", "seq", "tail_seq", "erase_count", "epoch", "stamp")


def parse_sector_header(b):
    """A SectorHeader, or None when the bytes are not a valid header; FormatError for a newer version."""
    f = struct.unpack_from(_SECTOR_FMT, b, 0)
    if f[0] != MAGIC or crc32(bytes(b[0:36])) != f[12]:
        return None
    if f[1] != VERSION:
        if f[1] > VERSION:
            raise FormatError("spool format version %d is newer than this tinymta understands (version %d); "
                              "upgrade tinymta, or move the spool away" % (f[1], VERSION))
        raise FormatError("spool format version %d is not one this tinymta understands (version %d)"
                          % (f[1], VERSION))
    h = SectorHeader()
    h.log2_sector, h.log2_unit, h.nsectors = f[2], f[3], f[5]
    h.seq, h.tail_seq, h.erase_count, h.epoch, h.stamp = f[6], f[7], f[8], f[9], f[10]
    return h


def pack_record_header(buf, pos, rtype, flags, length, stamp, rec_seq, msg_id, aux, payload_crc):
    struct.pack_into("<BBHIIQII", buf, pos, rtype, flags, length, stamp, rec_seq & MASK32, msg_id, aux & MASK32,
                     payload_crc)
    struct.pack_into("<I", buf, pos + 28, crc32(bytes(buf[pos:pos + 28])))


def parse_record_header(b):
    """(type, flags, length, stamp, rec_seq, msg_id, aux, payload_crc) or None when invalid."""
    if b[0] == 0 or b[0] > PAD:
        return None
    f = struct.unpack_from(_REC_FMT + "I", b, 0)
    if crc32(bytes(b[0:28])) != f[8]:
        return None
    return f[:8]


def pad_length(pos, unit):
    """Bytes of PAD record needed to bring pos to a program-unit boundary (0, or >= REC_HDR)."""
    gap = (-pos) % unit
    if gap == 0:
        return 0
    while gap < REC_HDR:
        gap += unit
    return gap


# --- envelope: the first `aux` bytes of a message's payload stream -------
ENV_VERSION = 1


def _put_str(out, s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if len(b) > 0xFFFF:
        raise ValueError("address too long")
    out.extend(struct.pack("<H", len(b)))
    out.extend(b)


def encode_envelope(sender, recipients, arrived, params=b""):
    if not recipients:
        raise ValueError("a message needs at least one recipient")
    out = bytearray()
    out.extend(struct.pack("<BBHI", ENV_VERSION, 0, len(recipients), arrived & MASK32))
    _put_str(out, sender)
    for r in recipients:
        _put_str(out, r)
    _put_str(out, params)
    return bytes(out)


def decode_envelope(b):
    """(sender, [recipients], arrived, params bytes); FormatError when malformed."""
    try:
        ver, _flags, n, arrived = struct.unpack_from("<BBHI", b, 0)
        if ver != ENV_VERSION:
            raise FormatError("envelope version %d unknown" % ver)
        pos = 8
        fields = []
        for _ in range(n + 2):
            ln = struct.unpack_from("<H", b, pos)[0]
            pos += 2
            if pos + ln > len(b):
                raise FormatError("envelope truncated")
            fields.append(bytes(b[pos:pos + ln]))
            pos += ln
        sender = fields[0].decode("utf-8")
        rcpts = [f.decode("utf-8") for f in fields[1:n + 1]]
    except _DECODE_ERRORS:
        raise FormatError("envelope malformed")
    return sender, rcpts, arrived, fields[n + 1]


def encode_ack(entries):
    """entries: list of (msg_id, base, mask)."""
    out = bytearray(ACK_ENTRY * len(entries))
    for i in range(len(entries)):
        e = entries[i]
        struct.pack_into("<QII", out, i * ACK_ENTRY, e[0], e[1], e[2])
    return out


def decode_ack(b, count):
    if count * ACK_ENTRY != len(b):
        return None
    return [struct.unpack_from("<QII", b, i * ACK_ENTRY) for i in range(count)]


def format_id(msg_id):
    return "%012X" % msg_id


def parse_id(text):
    try:
        return int(text, 16)
    except ValueError:
        raise ValueError("not a queue id: %r" % (text,))
