"""DNS messages on the wire for the dns shim (RFC 1035 §4, RFC 3596): a query out, a reply in.

Holds make_query(qid, labels, qtype) -> bytes, parse(buf) -> Reply, and the name helpers
from_text (text -> labels), to_text (labels -> "mx.example." as dnspython prints it), key
(a case-folded form for comparing names) and ipv6_text (dnspython's IPv6 text form).

Replies are untrusted input, so every read is bounds-checked and anything malformed raises
dns.exception.FormError, never IndexError. Names follow dnspython's rules: each compression
pointer must point strictly before the previous one and the target must not overlap what was
already read, so a name is read by a loop that always ends (never by recursion); at most 16
pointers and 255 bytes per name. Record data of the types dnspython checks strictly (A, AAAA,
MX, CNAME, NS, PTR, SOA, TXT) is checked the same way; other types are skipped whole.

It must not know sockets, nameservers, timeouts or retry policy (resolver.py), nor tinymta.
"""
from .exception import FormError

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA = 1, 2, 5, 6, 12, 15, 16, 28
CLASS_IN = 1
QR, TC = 0x8000, 0x0200
MAX_POINTERS = 16           # dnspython's MAX_COMPRESSION_POINTER_CHAIN
_ESCAPED = '"().;\\@$'      # escaped with a backslash in text, as dnspython does
_NAME_ONLY = (NS, CNAME, PTR)


class Reply:
    """A parsed reply: header fields, the question, and the answer section's records.

    question: [(key, qtype, qclass)]; answer: [(owner key, rtype, rclass, value)] where value is
    the address text (A, AAAA), (preference, labels) (MX) or labels (CNAME); records of other
    types are checked and left out. When the TC bit is set only the header and question are
    read (the rest may be cut off: the resolver asks again over TCP)."""

    def __init__(self, qid, flags):
        self.id = qid
        self.flags = flags
        self.rcode = flags & 0xF
        self.opcode = (flags >> 11) & 0xF
        self.tc = bool(flags & TC)
        self.question = []
        self.answer = []


def _u16(buf, i, end):
    if i + 2 > end:
        raise FormError("DNS message is truncated")
    return (buf[i] << 8) | buf[i + 1]


def read_name(buf, pos, end):
    """(labels, next position) for the name at pos; no byte at or past end is read."""
    labels = []
    total = 1                   # wire length so far, the root's zero byte included
    limit = end                 # shrinks at each pointer: a target may not overlap what was read
    start = pos                 # where the current run of labels began
    biggest = pos               # every pointer must point before this
    after = -1                  # where the caller goes on: just past the first pointer
    hops = 0
    while True:
        if pos >= limit:
            raise FormError("DNS name runs past its end")
        n = buf[pos]
        if n == 0:
            pos += 1
            break
        if n < 64:
            if pos + 1 + n > limit:
                raise FormError("DNS label runs past its end")
            labels.append(bytes(buf[pos + 1:pos + 1 + n]))
            total += n + 1
            if total > 255:
                raise FormError("DNS name is longer than 255 bytes")
            pos += 1 + n
        elif n >= 192:
            if pos + 2 > limit:
                raise FormError("DNS compression pointer is cut off")
            target = ((n & 0x3F) << 8) | buf[pos + 1]
            if target >= biggest:   # forwards or to itself: a loop, or nonsense
                raise FormError("DNS compression pointer does not point backwards")
            hops += 1
            if hops > MAX_POINTERS:
                raise FormError("DNS compression pointer chain is too long")
            if after < 0:
                after = pos + 2
            biggest = target
            limit = start
            start = pos = target
        else:
            raise FormError("bad DNS label type")
    return labels, (after if after >= 0 else pos)


def from_text(name):
    """Labels of a host name given as text ("mx.example" or "mx.example."); ASCII only."""
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return []
    out, total = [], 1
    for label in name.split("."):
        b = label.encode()      # MicroPython's encode() ignores "ascii": check the bytes instead
        if [c for c in b if c > 127]:
            raise FormError("non-ASCII DNS name %r (IDNA is not supported)" % name)
        if not b or len(b) > 63:
            raise FormError("empty or over-long label in DNS name %r" % name)
        total += len(b) + 1
        out.append(b)
    if total > 255:
        raise FormError("DNS name %r is longer than 255 bytes" % name)
    return out


def to_text(labels):
    """dnspython's str(name) for an absolute name: "mx.example." and "." for the root."""
    if not labels:
        return "."
    parts = []
    for label in labels:
        t = ""
        for c in label:
            ch = chr(c)
            if ch in _ESCAPED:
                t += "\\" + ch
            elif 0x20 < c < 0x7F:
                t += ch
            else:
                t += "\\%03d" % c
        parts.append(t)
    return ".".join(parts) + "."


def key(labels):
    """A name in a form that compares equal exactly when DNS says the names are equal."""
    out = bytearray()
    for label in labels:
        out.append(len(label))
        out.extend(label.lower())   # ASCII-only folding, as DNS does (RFC 4343)
    return bytes(out)


def ipv6_text(b):
    """16 bytes -> IPv6 text as dnspython writes it (longest zero run as "::", IPv4 forms)."""
    chunks = ["%x" % ((b[i] << 8) | b[i + 1]) for i in range(0, 16, 2)]
    best_start = best_len = 0
    i = 0
    while i < 8:                # the first longest run of zero chunks
        if chunks[i] == "0":
            j = i
            while j < 8 and chunks[j] == "0":
                j += 1
            if j - i > best_len:
                best_start, best_len = i, j - i
            i = j
        else:
            i += 1
    if best_len > 1:
        if best_start == 0 and (best_len == 6 or (best_len == 5 and chunks[5] == "ffff")):
            prefix = "::" if best_len == 6 else "::ffff:"
            return prefix + "%d.%d.%d.%d" % (b[12], b[13], b[14], b[15])
        return ":".join(chunks[:best_start]) + "::" + ":".join(chunks[best_start + best_len:])
    return ":".join(chunks)


def make_query(qid, labels, qtype):
    """A standard query with RD set (we ask a recursive resolver), one question, class IN."""
    out = bytearray(12)
    out[0], out[1] = qid >> 8, qid & 0xFF
    out[2] = 0x01               # RD
    out[5] = 1                  # QDCOUNT
    for label in labels:
        out.append(len(label))
        out.extend(label)
    out.append(0)
    out.extend(bytes([qtype >> 8, qtype & 0xFF, 0, CLASS_IN]))
    return bytes(out)


def _need(cond):
    if not cond:
        raise FormError("bad DNS record data")


def _rdata(buf, rtype, rclass, pos, end):
    """The value of one record's data buf[pos:end], or None for a type the shim does not use."""
    if rtype == A and rclass == CLASS_IN:
        _need(end - pos == 4)
        return "%d.%d.%d.%d" % (buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3])
    if rtype == AAAA and rclass == CLASS_IN:
        _need(end - pos == 16)
        return ipv6_text(bytes(buf[pos:end]))
    if rtype == MX:
        pref = _u16(buf, pos, end)
        labels, p = read_name(buf, pos + 2, end)
        _need(p == end)
        return (pref, labels)
    if rtype in _NAME_ONLY:
        labels, p = read_name(buf, pos, end)
        _need(p == end)
        return labels
    if rtype == SOA:            # not used, but checked as dnspython does (NXDOMAIN carries one)
        p = read_name(buf, pos, end)[1]
        p = read_name(buf, p, end)[1]
        _need(end - p == 20)
    elif rtype == TXT:
        _need(end > pos)
        p = pos
        while p < end:
            p += 1 + buf[p]
        _need(p == end)
    return None


def parse(buf):
    """Reply for the message in buf; FormError when it is short, malformed or has trailing bytes."""
    end = len(buf)
    if end < 12:
        raise FormError("DNS message is shorter than its header")
    r = Reply(_u16(buf, 0, end), _u16(buf, 2, end))
    counts = [_u16(buf, i, end) for i in (4, 6, 8, 10)]
    pos = 12
    for _ in range(counts[0]):
        labels, pos = read_name(buf, pos, end)
        r.question.append((key(labels), _u16(buf, pos, end), _u16(buf, pos + 2, end)))
        pos += 4
    if r.tc:
        return r
    for section in range(3):
        for _ in range(counts[1 + section]):
            labels, pos = read_name(buf, pos, end)
            rtype, rclass = _u16(buf, pos, end), _u16(buf, pos + 2, end)
            rdlen = _u16(buf, pos + 8, end)
            pos += 10
            if pos + rdlen > end:
                raise FormError("DNS record data runs past the end")
            value = _rdata(buf, rtype, rclass, pos, pos + rdlen)
            pos += rdlen
            if section == 0 and value is not None:
                r.answer.append((key(labels), rtype, rclass, value))
    if pos != end:
        raise FormError("trailing bytes after the DNS message")
    return r
