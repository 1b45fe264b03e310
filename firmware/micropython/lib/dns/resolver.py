"""dns.resolver for the dns shim: a stub resolver asking the configured nameservers only.

Holds Resolver (.nameservers, .nameserver_ports, .port, .timeout, .lifetime, .search,
resolve(name, rdtype) for "A", "AAAA", "MX" and "CNAME"), the answer and its records (MX:
.preference and .exchange, whose str() is "mx.example." or "."; A/AAAA: .address), and the
exceptions NXDOMAIN, NoAnswer, NoNameservers and LifetimeTimeout (a dns.exception.Timeout).

It behaves as dnspython's Resolver does for these calls: the name is absolute (no search list);
each round asks every nameserver in order over UDP, and over TCP when the reply is truncated;
a UDP datagram that is malformed, has the wrong ID, no QR or another question is ignored (it is
not our reply); a server that answers SERVFAIL, REFUSED or another error, or sends a malformed
reply over TCP, is dropped,
and when none is left: NoNameservers; timeouts are retried, with a backoff between rounds, until
.lifetime is spent: LifetimeTimeout. CNAMEs in the answer section are followed (at most 16).

Resolver() reads "nameserver" lines from /etc/resolv.conf when there is one; a board has none,
so it asks the network interface for its DHCP-given server, and with neither every resolve()
raises NoNameservers saying so (tinymta passes relay.dns_servers via Resolver(configure=False)).

It must not know the wire format (_wire.py) or tinymta; sockets and time are used here only.
"""
import select
import socket

from . import _wire
from .exception import DNSException, FormError, Timeout

try:
    from time import ticks_ms, ticks_add, ticks_diff, sleep_ms
except ImportError:             # CPython (tests): the same four from the monotonic clock
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_add(a, b):
        return a + b

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        _time.sleep(ms / 1000)

TYPES = {"A": _wire.A, "AAAA": _wire.AAAA, "MX": _wire.MX, "CNAME": _wire.CNAME}
MAX_CHAIN = 16                  # dnspython's limit on CNAMEs followed
UDP_SIZE = 1232                 # no EDNS is sent, so replies keep to 512 bytes; room for sloppy servers
_EINPROGRESS = (115, 11, 36, 119)  # connect() under way: Linux, EAGAIN, BSD, lwIP


class NXDOMAIN(DNSException):
    msg = "The DNS query name does not exist"


class NoAnswer(DNSException):
    msg = "The DNS response does not contain an answer to the question"


class NoNameservers(DNSException):
    msg = "All nameservers failed to answer the query"


class LifetimeTimeout(Timeout):
    msg = "The resolution lifetime expired"


class _NotOurs(FormError):
    """A reply that does not answer our query (ID, QR, opcode or question differ)."""


class _TryTimeout(Exception):
    """One try at one server got no reply in time (internal: the server stays in the round)."""


class Name:
    """An absolute domain name; str() is its text as dnspython prints it."""

    def __init__(self, labels):
        self.labels = labels

    def to_text(self):
        return _wire.to_text(self.labels)

    def __str__(self):
        return _wire.to_text(self.labels)

    def __repr__(self):
        return "<DNS name %s>" % self

    def __eq__(self, other):
        return isinstance(other, Name) and _wire.key(self.labels) == _wire.key(other.labels)

    def __hash__(self):
        return hash(_wire.key(self.labels))


class MX:
    rdtype = _wire.MX

    def __init__(self, preference, exchange):
        self.preference = preference
        self.exchange = exchange

    def to_text(self):
        return "%d %s" % (self.preference, self.exchange)


class Address:
    """An A or AAAA record."""

    def __init__(self, rdtype, address):
        self.rdtype = rdtype
        self.address = address

    def to_text(self):
        return self.address


class CNAME:
    rdtype = _wire.CNAME

    def __init__(self, target):
        self.target = target

    def to_text(self):
        return str(self.target)


class Answer:
    """The records answering a question: iterate, index or len(); .canonical_name is the name
    at the end of the CNAME chain, .qname the name asked for."""

    def __init__(self, qname, rdtype, canonical_name, rrset):
        self.qname = qname
        self.rdtype = rdtype
        self.canonical_name = canonical_name
        self.rrset = rrset

    def __iter__(self):
        return iter(self.rrset)

    def __len__(self):
        return len(self.rrset)

    def __getitem__(self, i):
        return self.rrset[i]


def _record(rtype, value):
    if rtype == _wire.MX:
        return MX(value[0], Name(value[1]))
    if rtype == _wire.CNAME:
        return CNAME(Name(value))
    return Address(rtype, value)


def check_reply(reply, qid, qkey, qtype):
    """_NotOurs unless reply answers query qid for (qkey, qtype, IN), as dnspython's is_response."""
    if not reply.flags & _wire.QR or reply.id != qid or reply.opcode != 0:
        raise _NotOurs("not a reply to our query")
    if reply.rcode in (1, 2, 4, 5) and not reply.question:
        return                  # error replies may leave the question out
    if reply.question != [(qkey, qtype, _wire.CLASS_IN)]:
        raise _NotOurs("reply is for another question")


def answer(reply, qlabels, qtype):
    """The Answer in a reply to (qlabels, qtype) with RCODE NOERROR or NXDOMAIN.

    The CNAME chain in the answer section is followed; records are kept in the order they came,
    duplicates dropped (dnspython's rrsets are sets). NXDOMAIN for RCODE 3, NoAnswer when the
    chain ends without the type asked for; FormError for a chain too long, or records with
    NXDOMAIN (dnspython drops such a server)."""
    qkey = _wire.key(qlabels)
    name, found = qlabels, []
    for _ in range(MAX_CHAIN):
        found = [v for k, t, c, v in reply.answer if k == qkey and t == qtype and c == _wire.CLASS_IN]
        if found or qtype == _wire.CNAME:
            break
        nxt = [v for k, t, c, v in reply.answer if k == qkey and t == _wire.CNAME and c == _wire.CLASS_IN]
        if not nxt:
            break
        name = nxt[0]
        qkey = _wire.key(name)
    else:
        raise FormError("CNAME chain is longer than %d" % MAX_CHAIN)
    if reply.rcode == 3:
        if found:
            raise FormError("records in an NXDOMAIN reply")
        raise NXDOMAIN("The DNS query name does not exist: %s" % _wire.to_text(qlabels))
    if not found:
        raise NoAnswer("The DNS response does not contain an answer to the question: %s IN %s"
                       % (_wire.to_text(qlabels), _type_name(qtype)))
    rrset, seen = [], []
    for v in found:
        k = (v[0], _wire.key(v[1])) if qtype == _wire.MX else (_wire.key(v) if qtype == _wire.CNAME else v)
        if k not in seen:
            seen.append(k)
            rrset.append(_record(qtype, v))
    return Answer(Name(qlabels), qtype, Name(name), rrset)


def _type_name(code):
    for k in TYPES:
        if TYPES[k] == code:
            return k
    return str(code)


def _errno(e):
    return e.args[0] if e.args else None


def _wait(sock, mask, deadline):
    """Wait until sock is ready for mask (or in error); _TryTimeout at deadline (ticks_ms)."""
    p = select.poll()
    p.register(sock, mask)
    while True:
        left = ticks_diff(deadline, ticks_ms())
        if left <= 0:
            raise _TryTimeout()
        if p.poll(left):
            return


def _udp(sockaddr, family, query, qid, qkey, qtype, deadline):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect(sockaddr)     # the kernel then drops datagrams from anyone else
        s.send(query)
        while True:
            _wait(s, select.POLLIN, deadline)
            try:
                reply = _wire.parse(s.recv(UDP_SIZE))
                check_reply(reply, qid, qkey, qtype)
            except FormError:   # garbage, a late reply to an earlier try, or spoofed: as
                continue        # dnspython does, ignore it and wait for the real one
            return reply
    finally:
        s.close()


def _tcp(sockaddr, family, query, qid, qkey, qtype, deadline):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        try:
            s.connect(sockaddr)
        except OSError as e:
            if _errno(e) not in _EINPROGRESS:
                raise
        out = memoryview(bytes([len(query) >> 8, len(query) & 0xFF]) + query)
        while out:
            _wait(s, select.POLLOUT, deadline)
            n = s.send(out)     # raises when the connection was refused
            out = out[n or 0:]
        got = bytearray()
        need = 2
        while len(got) < need:
            _wait(s, select.POLLIN, deadline)
            chunk = s.recv(need - len(got))
            if not chunk:
                raise FormError("TCP connection closed before the whole reply")
            got.extend(chunk)
            if len(got) == 2 and need == 2:
                need = 2 + ((got[0] << 8) | got[1])
        reply = _wire.parse(bytes(got[2:]))
        check_reply(reply, qid, qkey, qtype)    # one query per connection: no stale replies
        if reply.tc:
            raise FormError("truncated reply over TCP")
        return reply
    finally:
        s.close()


def _new_id():
    try:
        import os
        b = os.urandom(2)
        return (b[0] << 8) | b[1]
    except (ImportError, AttributeError, OSError):
        import random
        return random.getrandbits(16)


class Resolver:
    def __init__(self, filename="/etc/resolv.conf", configure=True):
        self.nameservers = []
        self.nameserver_ports = {}
        self.port = 53
        self.timeout = 2.0
        self.lifetime = 5.0
        self.search = []
        self._dhcp = None           # the server taken from the network interface, if any
        if configure:
            self.read_resolv_conf(filename)
            if not self.nameservers:
                self._dhcp = ""     # follow the interface: asked again at every resolve()
                self._from_network()

    def read_resolv_conf(self, filename):
        """Take the "nameserver" lines of a resolv.conf; a missing file leaves the list empty."""
        try:
            with open(filename) as f:
                text = f.read()
        except OSError:
            return
        for line in text.split("\n"):
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver" and words[1] not in self.nameservers:
                self.nameservers.append(words[1])

    def _from_network(self):
        """On a board: the DNS server the station interface got by DHCP (ifconfig()[3]).
        Wi-Fi may come up after the MTA started, and DHCP may hand out another server later, so a
        resolver configured this way asks again before every lookup."""
        try:
            import network
            dns = network.WLAN(network.STA_IF).ifconfig()[3]
        except Exception:       # no network module (unix port, CPython), or no interface up
            return
        if not dns or dns == "0.0.0.0" or dns == self._dhcp:
            return
        if self._dhcp in self.nameservers:
            self.nameservers.remove(self._dhcp)
        self._dhcp = dns
        self.nameservers.append(dns)

    def resolve(self, qname, rdtype="A", rdclass="IN", tcp=False):
        """The Answer for qname (str, taken as absolute) and rdtype; see the module docstring."""
        if rdclass not in ("IN", _wire.CLASS_IN):
            raise DNSException("only class IN is supported")
        qtype = TYPES.get(rdtype, rdtype) if isinstance(rdtype, str) else rdtype
        if not isinstance(qtype, int):
            raise DNSException("unsupported record type %r" % (rdtype,))
        labels = _wire.from_text(qname)
        qkey = _wire.key(labels)
        if self._dhcp is not None:
            self._from_network()
        if not self.nameservers:
            raise NoNameservers("no nameservers configured (no /etc/resolv.conf and none given)")
        start = ticks_ms()
        lifetime_ms = int(self.lifetime * 1000)
        servers = list(self.nameservers)
        errors = []
        backoff = 100
        while True:
            for ip in list(servers):
                left = lifetime_ms - ticks_diff(ticks_ms(), start)
                if left <= 0:
                    raise LifetimeTimeout("The resolution lifetime expired after %.3f seconds"
                                          % (self.lifetime,))
                deadline = ticks_add(ticks_ms(), min(int(self.timeout * 1000), left))  # ticks wrap
                port = self.nameserver_ports.get(ip, self.port)
                try:
                    reply = self._ask(ip, port, labels, qkey, qtype, deadline, tcp)
                except _TryTimeout:
                    errors.append("%s: timed out" % ip)
                    continue
                except (OSError, DNSException) as e:
                    servers.remove(ip)
                    errors.append("%s: %s" % (ip, e))
                    continue
                if reply.rcode in (0, 3):
                    try:
                        return answer(reply, labels, qtype)
                    except FormError as e:
                        servers.remove(ip)
                        errors.append("%s: %s" % (ip, e))
                        continue
                servers.remove(ip)
                errors.append("%s: rcode %d" % (ip, reply.rcode))
            if not servers:
                raise NoNameservers("All nameservers failed to answer the query %s IN %s: %s"
                                    % (_wire.to_text(labels), _type_name(qtype), "; ".join(errors)))
            left = lifetime_ms - ticks_diff(ticks_ms(), start)
            sleep_ms(max(0, min(backoff, left)))
            backoff = min(backoff * 2, 2000)

    def _ask(self, ip, port, labels, qkey, qtype, deadline, tcp):
        """One try at one server: UDP, then TCP when the reply is truncated (or tcp=True)."""
        ai = socket.getaddrinfo(ip, port, 0, socket.SOCK_DGRAM)[0]
        family, sockaddr = ai[0], ai[-1]
        qid = _new_id()
        query = _wire.make_query(qid, labels, qtype)
        if not tcp:
            reply = _udp(sockaddr, family, query, qid, qkey, qtype, deadline)
            if not reply.tc:
                return reply
            qid = _new_id()
            query = _wire.make_query(qid, labels, qtype)
        return _tcp(sockaddr, family, query, qid, qkey, qtype, deadline)
