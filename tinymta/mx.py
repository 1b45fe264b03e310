"""Where mail for a domain goes: MX resolution for the relay's "mx" mode (RFC 5321 §5.1, RFC 7505).

Holds `resolve_mx(domain, resolver)`, which returns the hosts to try, in order, each as
(name, [addresses]); `host_addresses(resolver, host, families)` for one host (the smarthost's
name on MicroPython); `make_resolver(dns_servers, timeout)`, which builds the resolver from
relay.dns_servers; and `DNSFailure`, raised when there is nowhere to deliver. The rules
(protocol.md §1.8, §2.2):

- MX records sorted by preference, lowest first; equal preferences shuffled (MUST, M5) with `rng`
  (anything with getrandbits(k), e.g. random.Random(seed); default: the random module). The
  shuffle starts from name order, so one seed gives one order whatever order DNS returned.
- Every address of each host: A then AAAA (`families=("A", "AAAA")`; ("AAAA", "A") prefers
  IPv6, ("A",) is IPv4 only and never asks for AAAA). Addresses keep the resolver's order.
  A host with no usable address is skipped; when every host is skipped: temporary 4.4.3.
- No MX records (NOERROR, no data) -> implicit MX: the domain itself, preference 0. Only then:
  when MX records exist, the domain's own A/AAAA are never used (M4). CNAMEs are followed.
  A domain that exists with no MX and no A/AAAA either (NODATA for each) -> permanent 5.4.4,
  as Postfix does: no retry can help.
- Null MX (every record is "MX n ."; RFC 7505 says "MX 0 .") -> permanent 5.1.10, and never a
  fallback to A/AAAA. A "." among real MX records is dropped.
- NXDOMAIN -> permanent 5.1.2. SERVFAIL, REFUSED, timeout, no nameserver -> temporary 4.4.3.
- `own_names`: our host names (M8). A record naming one is dropped with every record of the same or
  a higher preference number; none left -> permanent 5.4.6 (mail would loop back to us).
- Domain literals `[192.0.2.1]` and `[IPv6:2001:db8::1]` resolve without any DNS query. A bad
  literal or domain name -> permanent 5.1.3. An MX target that looks like an IP address is only
  looked up as a name (M7): it normally has no address records and is skipped.

It must not know SMTP, sockets, the spool, the config file or retry timing: the relay maps
DNSFailure to a DSN (permanent) or a requeue (temporary) and caps how many addresses it tries.

The DNS client is dnspython, imported as `dns.*`. On boards a small shim package named `dns`
gives the same names. This module uses only:
    dns.resolver.Resolver(configure=False); Resolver() (system configuration, see make_resolver)
    resolver attributes .nameservers (list of IP strings), .nameserver_ports ({ip: port}),
        .timeout (seconds per query try), .lifetime (seconds per resolve() call)
    resolver.resolve(name, rdtype): name a str, rdtype "MX", "A" or "AAAA"; no search list.
        It follows CNAMEs and retries over TCP when a UDP answer is truncated. It returns an
        iterable of records: MX records have .preference (int) and .exchange (str() gives
        "mx.example." or "." for the root); A/AAAA records have .address (str).
    exceptions dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers,
        dns.exception.Timeout (dnspython's LifetimeTimeout is a subclass), and
        dns.exception.DNSException (the base of all of these).
"""
import dns.exception
import dns.resolver

from tinymta import compat
from tinymta.netaddr import parse_ip

FAMILIES = ("A", "AAAA")


class DNSFailure(Exception):
    """Nowhere to deliver for a domain. .permanent (bounce, no retry) or temporary (requeue);
    .status is the RFC 3463 code ("5.1.10"); .text says what happened, for the DSN and the log."""

    def __init__(self, permanent, status, text):
        super().__init__("%s %s" % (status, text))
        self.permanent = permanent
        self.status = status
        self.text = text


class _TimedOut(DNSFailure):
    """A DNSFailure from a timeout (internal: host_addresses skips the host's other family)."""


def make_resolver(dns_servers, timeout=5, lifetime=None):
    """A dnspython Resolver asking only dns_servers, a list of (ip, port) (relay.dns_servers).

    It is built with configure=False, so /etc/resolv.conf is never read. When dns_servers is
    empty, it uses the system configuration (/etc/resolv.conf on Linux; on boards, whatever the
    shim does, e.g. the DHCP-given server): the default for a Pi, never used by tests.
    timeout bounds one query try; lifetime bounds one lookup (all tries and servers together),
    by default timeout * (servers + 1), so each server gets a try and the first one gets two.
    Two entries with one IP and different ports cannot be expressed: ValueError.
    """
    if dns_servers:
        r = dns.resolver.Resolver(configure=False)
        ips, ports = [], {}
        for host, port in dns_servers:
            if host in ports:
                if ports[host] != port:
                    raise ValueError("DNS server %s is listed with two ports" % host)
                continue
            ips.append(host)
            ports[host] = port
        r.nameservers = ips
        r.nameserver_ports = ports
    else:
        r = dns.resolver.Resolver()
    r.timeout = timeout
    r.lifetime = lifetime if lifetime is not None else timeout * (len(dns_servers or ()) + 1)
    return r


def _bad_name(name):
    """Why name (no trailing dot) is not a usable domain name, or None."""
    if not name or len(name) > 253:
        return "bad domain name length"
    for label in name.split("."):
        if not label or len(label) > 63:
            return "empty or over-long label"
        if [c for c in label if c <= " " or c in "[]\\@"]:
            return "bad characters"
    return None


def _literal(domain):
    """[(ip, [ip])] for a domain literal "[1.2.3.4]" / "[IPv6:...]", or DNSFailure 5.1.3."""
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        ip, bits = inner[5:], 128
    else:
        ip, bits = inner, 32
    parsed = parse_ip(ip)
    if parsed is None or parsed[0] != bits:
        raise DNSFailure(True, "5.1.3", "bad address literal %s" % domain)
    ip = ip.lower()
    return [(ip, [ip])]


def _query(resolver, name, rdtype):
    """resolver.resolve() with errors as DNSFailure; a name that exists with no such record -> []."""
    if compat.MICROPYTHON:          # the query blocks the loop: feed a board's watchdog, cap the wait
        resolver.lifetime = compat.blocking(resolver.lifetime)
        resolver.timeout = min(resolver.timeout, resolver.lifetime)
    try:
        return list(resolver.resolve(name, rdtype))
    except dns.resolver.NXDOMAIN:
        raise DNSFailure(True, "5.1.2", "%s: domain not found (NXDOMAIN)" % name)
    except dns.resolver.NoAnswer:
        return []
    except dns.exception.Timeout:
        raise _TimedOut(False, "4.4.3", "%s %s lookup failed: timed out" % (name, rdtype))
    except dns.resolver.NoNameservers:
        why = "no nameserver answered (SERVFAIL or refused)"
    except dns.exception.DNSException as e:
        why = "%s: %s" % (type(e).__name__, e)
    raise DNSFailure(False, "4.4.3", "%s %s lookup failed: %s" % (name, rdtype, why))


def _shuffle(items, rng):
    """Fisher-Yates with getrandbits only (MicroPython's random has no shuffle)."""
    for i in range(len(items) - 1, 0, -1):
        n = i + 1
        k = n.bit_length() if hasattr(n, "bit_length") else len(bin(n)) - 2
        j = rng.getrandbits(k)
        while j >= n:
            j = rng.getrandbits(k)
        items[i], items[j] = items[j], items[i]


def _mx_order(records, rng):
    """[(pref, name)] -> names sorted by preference, each group of equal preference shuffled."""
    records = sorted(records)
    out, i = [], 0
    while i < len(records):
        j = i
        while j < len(records) and records[j][0] == records[i][0]:
            j += 1
        group = [name for _, name in records[i:j]]
        _shuffle(group, rng)
        out.extend(group)
        i = j
    return out


def host_addresses(resolver, host, families):
    """(addresses, None) or ([], why) for one host, in families order, resolver order within.
    why is None too when the host simply has no address records (every lookup said NODATA)."""
    addrs, whys = [], []
    for rdtype in families:
        try:
            rrs = _query(resolver, host, rdtype)
        except DNSFailure as e:
            whys.append(e.text)
            if e.permanent or isinstance(e, _TimedOut):  # NXDOMAIN: no records of any type;
                break  # a timeout: the other family would most likely wait as long again
            continue
        for rr in rrs:
            if rr.address not in addrs:
                addrs.append(rr.address)
    if addrs or not whys:
        return addrs, None
    return [], "; ".join(whys)


def resolve_mx(domain, resolver, rng=None, families=FAMILIES, own_names=()):
    """The hosts to try for domain, in order: [(name, [ip, ...]), ...], never empty.

    name is lowercase without the trailing dot (for TLS and logs); ip is text, A before AAAA by
    default (families). Raises DNSFailure (.permanent, .status, .text); see the module docstring.
    """
    if not families:
        raise ValueError("families: empty")
    for f in families:
        if f not in FAMILIES:
            raise ValueError("families: %r is not A or AAAA" % (f,))
    domain = domain.strip()
    if domain.startswith("[") and domain.endswith("]"):
        return _literal(domain)
    domain = domain.lower()
    if domain.endswith("."):
        domain = domain[:-1]
    why = _bad_name(domain)
    if why:
        raise DNSFailure(True, "5.1.3", "bad domain %r: %s" % (domain, why))
    if rng is None:
        import random as rng

    records = []
    for rr in _query(resolver, domain, "MX"):
        name = str(rr.exchange).lower()
        records.append((rr.preference, name[:-1] if name.endswith(".") else name))
    if records and not [1 for _, name in records if name]:  # "." is "" after the strip
        raise DNSFailure(True, "5.1.10", "%s accepts no mail (null MX, RFC 7505)" % domain)
    records = [r for r in records if r[1]]
    implicit = not records
    if implicit:
        records = [(0, domain)]  # implicit MX (RFC 5321 §5.1)

    own = [n.lower().rstrip(".") for n in own_names]
    mine = [pref for pref, name in records if name in own]
    if mine:
        records = [r for r in records if r[0] < min(mine)]
        if not records:
            raise DNSFailure(True, "5.4.6", "mail for %s loops back to myself (MX)" % domain)

    hosts, skipped, seen = [], [], []
    for name in _mx_order(records, rng):
        if name in seen:  # one host listed at two preferences: its first place counts
            continue
        seen.append(name)
        addrs, why = host_addresses(resolver, name, families)
        if addrs:
            hosts.append((name, addrs))
        elif implicit and why is None:      # the domain exists but has no MX, A or AAAA at all
            raise DNSFailure(True, "5.4.4", "%s has no MX and no %s record: nowhere to deliver"
                             % (domain, "/".join(families)))
        else:
            skipped.append(why or "%s: no %s record" % (name, "/".join(families)))
    if not hosts:
        raise DNSFailure(False, "4.4.3", "no MX host for %s has an address: %s"
                         % (domain, "; ".join(skipped)))
    return hosts
