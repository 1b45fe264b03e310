"""tinymta configuration values: one key's value as read from a file -> its Config form.

Holds `convert(kind, value, arg)` for every kind a schema entry names (integers, ports, sizes,
durations, booleans, strings, enums, host names, lists of addresses, networks and domains), the
number parser behind sizes and durations (`number`, with SIZE_UNITS and TIME_UNITS), and `show`,
which quotes a bad value for an error message. Errors are ValueError with a short reason (a bad
list entry is quoted: ', got "x"'); tinymta.config adds the file, the key and the value. Address
parsing and CIDR matching live in tinymta.netaddr.

It must not know the schema (which keys exist, their kinds, defaults or sections), rules across
keys, files or their formats, SMTP, sockets or the spool.

Value forms
- sizes (kind "size"): integer bytes or "<n><unit>" with K, M, G, KiB, MiB, GiB (powers of 1024,
  any case): "64K", "4M", "1MiB". "MB" is refused as ambiguous.
- durations ("duration"): integer seconds, or "30s", "5m", "1h", "5d".
- addresses ("listen", "dns", "smarthost"): "host:port" or "[v6]:port", parsed to (host, port)
  tuples, IPv6 without brackets. The port may be left out: listen 25, dns 53, smarthost 0 (the
  caller picks it later). DNS servers are IPs.
- networks ("networks"): "a.b.c.d/n", "v6/n" or a bare address (/32, /128). Host bits set past
  the prefix is an error (typo guard). An IPv4 address and its mapped form ::ffff:a.b.c.d are
  the same address for matching, both ways.
- domains ("domains"): host names, lowercased, a trailing dot dropped.
- optional strings ("opt"): "" (or JSON null) means unset and reads as None; "optenum" is an
  enum that null leaves unset (None). Booleans are true/false only; integers refuse booleans and
  floats.
"""
from tinymta.netaddr import HOSTCHARS, parse_cidr, parse_hostport, parse_ip

MIB = 1 << 20
SIZE_UNITS = (("kib", 1024), ("mib", MIB), ("gib", 1 << 30), ("k", 1024), ("m", MIB), ("g", 1 << 30))
TIME_UNITS = (("s", 1), ("m", 60), ("h", 3600), ("d", 86400))


def show(v):
    """v as an error message quotes it: "text" (cut at 60), 12, true, null, a list, a table."""
    if v is None or v is True or v is False:
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, str):
        return '"%s"' % (v if len(v) <= 60 else v[:57] + "...")
    if isinstance(v, (int, float)):
        return repr(v)
    return "a " + {list: "list", dict: "table"}.get(type(v), type(v).__name__)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)  # isinstance(True, int) is False on MP


def number(v, lo, units, what):
    """An integer, or a string of digits with one of units' suffixes, as an int >= lo.
    Otherwise ValueError(what % lo)."""
    n = v if _is_int(v) else None
    if isinstance(v, str):
        s, mul = v.strip().lower(), 1
        for suffix, m in units:
            if s.endswith(suffix):
                s, mul = s[:-len(suffix)].strip(), m
                break
        n = int(s) * mul if s.isdigit() else None
    if n is None or n < lo:
        raise ValueError(what % lo)
    return n


def _item(kind, s):
    if kind == "listen":
        return parse_hostport(s, 25)
    if kind == "networks":
        return parse_cidr(s)
    if kind == "dns":
        hp = parse_hostport(s, 53)
        if parse_ip(hp[0]) is None:
            raise ValueError("DNS servers must be IP addresses")
        return hp
    d = s.strip().lower().rstrip(".")  # domains
    if not d or d[0] in ".-" or ".." in d or [c for c in d if c not in HOSTCHARS]:
        raise ValueError("bad domain")
    return d


def convert(kind, v, arg):
    """A value as read from the file -> its Config form, or ValueError saying what is wrong.
    arg: the minimum for int, size and duration; the choices for enums; for lists, 1 when at
    least one entry is needed."""
    if kind == "int":
        if not _is_int(v) or v < arg:
            raise ValueError("must be an integer >= %d" % arg)
    elif kind == "port":
        if not _is_int(v) or not 1 <= v <= 65535:
            raise ValueError("must be a port number 1-65535")
    elif kind == "size":
        return number(v, arg, SIZE_UNITS, 'must be a size >= %d bytes: an integer or "64K", "4M", "1MiB"...')
    elif kind == "duration":
        return number(v, arg, TIME_UNITS, 'must be a duration >= %d s: integer seconds or "30s", "5m", "1h", "5d"')
    elif kind == "bool":
        if not isinstance(v, bool):
            raise ValueError("must be true or false")
    elif kind == "str":
        if not isinstance(v, str) or not v:
            raise ValueError("must be a non-empty string")
    elif kind in ("opt", "smarthost"):
        if v is not None and not isinstance(v, str):
            raise ValueError('must be a string ("" for none)')
        if kind == "smarthost" and v:
            return parse_hostport(v, 0)  # port 0: the caller chooses it
        return v or None
    elif kind in ("enum", "optenum"):
        if v is None and kind == "optenum":
            return None  # unset: the caller chooses
        if not isinstance(v, str) or v not in arg:
            raise ValueError("must be one of " + ", ".join(['"%s"' % c for c in arg]))
    elif kind == "hostname":
        if not isinstance(v, str) or not v or ((v[0] != "[" or v[-1] != "]") and
                                               [c for c in v if c not in HOSTCHARS]):
            raise ValueError("must be a host name (letters, digits, '-', '.') or an [address]")
    else:  # lists of strings
        if not isinstance(v, list) or len(v) < arg:
            raise ValueError("must be a list of strings" + (" (at least one)" if arg else ""))
        out = []
        for s in v:
            if not isinstance(s, str):
                raise ValueError("entries must be strings, got %s" % show(s))
            try:
                out.append(_item(kind, s))
            except ValueError as e:
                raise ValueError("%s, got %s" % (e, show(s)))
        return out
    return v
