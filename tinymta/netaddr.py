"""Host:port and IPv4/IPv6 address and CIDR parsing and matching, by hand: MicroPython has no
`ipaddress` module.

Holds `parse_hostport` / `format_hostport` ("host:port", "[v6]:port" <-> (host, port), IPv6
without brackets, host names lowercased), `parse_ip` / `format_ip` (text <-> (bits, int)),
`parse_cidr` ("net/len" or a bare address -> (bits, net, mask, text); host bits set past the prefix
is an error) and `in_networks` (is an address, as text or packed 4/16 bytes, in one of those
networks). An IPv4 address and its mapped form ::ffff:a.b.c.d are the same address for matching,
both ways. Errors are ValueError with a short reason; callers add the key and the file.

It must not know config files, schema keys or defaults (tinymta.config applies these helpers to
its keys: relay_networks, listen, smarthost, dns_servers), SMTP, or sockets.
"""

# characters of a host name (tinymta.config checks domains and server.hostname with it too)
HOSTCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"
_HEX = "0123456789abcdefABCDEF"


def _parse_v4(s):
    parts = s.split(".")
    if len(parts) != 4:
        return None
    n = 0
    for p in parts:
        if not p.isdigit() or len(p) > 3 or (len(p) > 1 and p[0] == "0") or int(p) > 255:
            return None
        n = (n << 8) | int(p)
    return n


def _parse_v6(s):
    if s.count("::") > 1:
        return None
    rest = None
    if "::" in s:
        head, tail = s.split("::", 1)
        groups, rest = (head.split(":") if head else []), (tail.split(":") if tail else [])
    else:
        groups = s.split(":")
    last = groups if rest is None else rest
    if last and "." in last[-1]:  # embedded IPv4 as the last 32 bits
        v4 = _parse_v4(last[-1])
        if v4 is None:
            return None
        last[-1:] = ["%x" % (v4 >> 16), "%x" % (v4 & 0xffff)]
    total = len(groups) + len(rest or [])
    if total > (8 if rest is None else 7) or (rest is None and total < 8):
        return None
    n = 0
    for g in groups + ["0"] * (8 - total) + (rest or []):
        if not g or len(g) > 4 or [c for c in g if c not in _HEX]:
            return None
        n = (n << 16) | int(g, 16)
    return n


def parse_ip(s):
    """'1.2.3.4' -> (32, int); an IPv6 address -> (128, int); anything else -> None."""
    if not isinstance(s, str):
        return None
    n = _parse_v6(s) if ":" in s else _parse_v4(s)
    return None if n is None else ((128 if ":" in s else 32), n)


def format_ip(bits, n):
    """Text of a parse_ip() address (IPv6 uncompressed)."""
    if bits == 32:
        return "%d.%d.%d.%d" % ((n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255)
    return ":".join(["%x" % ((n >> (112 - 16 * i)) & 0xffff) for i in range(8)])


def parse_hostport(text, default_port=None):
    """'host:port' or '[v6]:port' -> (host, port), or ValueError saying what is wrong.

    The port may be left out when default_port is given. Host names come back lowercased.
    """
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        host, rest = s[1:end].lower(), s[end + 1:]
        if end < 0 or _parse_v6(host) is None:
            raise ValueError("bad IPv6 address in brackets")
    elif s.count(":") > 1:
        raise ValueError('IPv6 addresses need brackets, as "[::1]:25"')
    else:
        host, sep, port = s.partition(":")
        host, rest = host.lower(), sep + port
        if not host or [c for c in host if c not in HOSTCHARS]:
            raise ValueError("bad host (expected host:port, or [v6]:port)")
        if host.replace(".", "").isdigit() and _parse_v4(host) is None:
            raise ValueError("bad IPv4 address")
    if not rest and default_port is not None:
        return (host, default_port)
    if rest[:1] != ":" or not rest[1:].isdigit() or len(rest) > 6 or not 1 <= int(rest[1:]) <= 65535:
        raise ValueError("port must be a number 1-65535" if rest else "missing port (expected host:port)")
    return (host, int(rest[1:]))


def format_hostport(hp):
    return ("[%s]:%d" if ":" in hp[0] else "%s:%d") % hp


def parse_cidr(text):
    """'net/len' or a bare address -> (bits, net, mask, text), or ValueError saying what is wrong."""
    s = text.strip()
    addr, sep, plen = s.partition("/")
    ip = parse_ip(addr)
    if ip is None:
        raise ValueError("not an IPv4 or IPv6 network")
    bits, n = ip
    if sep and (not plen.isdigit() or len(plen) > 3 or int(plen) > bits):
        raise ValueError("prefix length must be 0-%d" % bits)
    prefix = int(plen) if sep else bits
    hostmask = (1 << (bits - prefix)) - 1
    if n & hostmask:
        raise ValueError('host bits set (did you mean "%s/%d"?)' % (format_ip(bits, n - (n & hostmask)), prefix))
    return (bits, n, ((1 << bits) - 1) - hostmask, s)


def _addr_forms(ip):
    # -> (IPv4 int or None, IPv6 int): an IPv4 address and ::ffff:a.b.c.d are the same address
    if isinstance(ip, (bytes, bytearray)):
        if len(ip) not in (4, 16):
            return None
        n = 0
        for b in ip:
            n = (n << 8) | b
        bits = len(ip) * 8
    else:
        s = ip.strip() if isinstance(ip, str) else ""
        if s.startswith("[") and s.endswith("]"):
            s = s[1:-1]
        r = parse_ip(s.split("%")[0])  # drop an IPv6 zone (fe80::1%eth0)
        if r is None:
            return None
        bits, n = r
    if bits == 32:
        return (n, (0xffff << 32) | n)
    return ((n & 0xffffffff) if (n >> 32) == 0xffff else None, n)


def in_networks(networks, ip):
    """True when ip (text, or packed 4/16 bytes) is in one of the parse_cidr() networks.

    An address that does not parse is in no network.
    """
    forms = _addr_forms(ip)
    if forms is None:
        return False
    v4, v6 = forms
    for bits, net, mask, _ in networks:
        if (v6 & mask == net) if bits == 128 else (v4 is not None and v4 & mask == net):
            return True
    return False
