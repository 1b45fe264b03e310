"""The dns shim (firmware/micropython/lib/dns) parses the same answers as dnspython.

The shim stands in for dnspython on boards (tinymta.mx imports `dns.resolver`). Here it is loaded
under CPython with another package name (so it never shadows the real dnspython in this process)
and compared with dnspython:

- on the wire: replies built by dnspython (compressed names, CNAME chains, null MX, NXDOMAIN,
  odd characters, duplicates) are read by both; the same records, or the same verdict, come out.
  Every prefix of a reply, pointer loops and random byte flips (hypothesis) must give the same
  result or a DNSException from the shim: never another exception;
- live, against a private dnsmasq on loopback (tests/dnsmasqfix.py): resolve() and
  tinymta.mx.resolve_mx through both, TCP after a truncated UDP reply, SERVFAIL, a reply with the
  wrong ID, a server that never answers, resolv.conf;
- under the real MicroPython unix port, resolving through the same dnsmasq (shim and tinymta.mx).

DNS goes only to servers these tests start on 127.0.0.1.
"""
import contextlib
import importlib
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dnsmasqfix import Dnsmasq, needs_dnsmasq
from mtaproc import MICROPYTHON, ROOT
from tinymta import mx as real_mx

SHIM_DIR = os.path.join(ROOT, "firmware", "micropython", "lib", "dns")
SHIM_LIB = os.path.dirname(SHIM_DIR)


def load_shim(name="tinymta_test_dnsshim"):
    """The shim package imported as `name` (its modules use relative imports only)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(SHIM_DIR, "__init__.py"),
                                                      submodule_search_locations=[SHIM_DIR])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[name] = pkg
        spec.loader.exec_module(pkg)
        for sub in ("exception", "_wire", "resolver"):
            setattr(pkg, sub, importlib.import_module(name + "." + sub))
    return sys.modules[name]


shim = load_shim()
assert shim.exception.DNSException is not dns.exception.DNSException   # really not dnspython


@contextlib.contextmanager
def shim_as_dns():
    """While inside: `import dns.resolver` gives the shim (for importing a module against it)."""
    names = ("dns", "dns.exception", "dns.resolver")
    saved = dict((n, sys.modules.get(n)) for n in names)
    sys.modules.update({"dns": shim, "dns.exception": shim.exception, "dns.resolver": shim.resolver})
    try:
        yield
    finally:
        for n in names:
            if saved[n] is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = saved[n]


def load_mx_on_shim(name="tinymta_test_mx_on_shim"):
    """tinymta/mx.py imported a second time, bound to the shim instead of dnspython."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, real_mx.__file__)
        mod = importlib.util.module_from_spec(spec)
        with shim_as_dns():
            spec.loader.exec_module(mod)
        sys.modules[name] = mod
    return sys.modules[name]


shim_mx = load_mx_on_shim()
assert shim_mx.dns is shim and real_mx.dns is not shim


# ---- one view of an answer, from either side ------------------------------------------------------

def rdata_view(rd):
    if hasattr(rd, "preference"):
        return [rd.preference, str(rd.exchange)]
    if hasattr(rd, "address"):
        return rd.address
    return str(rd.target)


def dnspython_view(query, wire):
    """What dnspython's resolver makes of wire as the reply to query."""
    try:
        r = dns.message.from_wire(wire)
    except Exception:
        return ("error",)
    if not query.is_response(r):
        return ("notours",)
    if r.flags & dns.flags.TC:
        return ("tc",)
    if r.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return ("rcode", r.rcode())
    q = query.question[0]
    try:
        ans = dns.resolver.Answer(q.name, q.rdtype, q.rdclass, r)
    except Exception:       # chain too long, records with NXDOMAIN: dnspython drops the server
        return ("error",)
    if r.rcode() == dns.rcode.NXDOMAIN:
        return ("NXDOMAIN",)
    if ans.rrset is None:
        return ("NoAnswer",)
    return ("records", [rdata_view(rd) for rd in ans])


def shim_view(query, wire):
    """The same, from the shim; any exception but a DNSException propagates (a test failure)."""
    q = query.question[0]
    labels = shim._wire.from_text(q.name.to_text())
    qtype = q.rdtype.value
    try:
        reply = shim._wire.parse(wire)
        shim.resolver.check_reply(reply, query.id, shim._wire.key(labels), qtype)
        if reply.tc:
            return ("tc",)
        if reply.rcode not in (0, 3):
            return ("rcode", reply.rcode)
        ans = shim.resolver.answer(reply, labels, qtype)
    except shim.resolver._NotOurs:
        return ("notours",)
    except shim.resolver.NXDOMAIN:
        return ("NXDOMAIN",)
    except shim.resolver.NoAnswer:
        return ("NoAnswer",)
    except shim.exception.DNSException:
        return ("error",)
    return ("records", [rdata_view(rd) for rd in ans])


def reply(qname, rdtype, answer=(), authority=(), rcode=dns.rcode.NOERROR):
    """(query, reply wire) built by dnspython; answer/authority: [(name, type, rdata text...)]."""
    q = dns.message.make_query(qname, rdtype)
    r = dns.message.make_response(q)
    for section, rrs in ((r.answer, answer), (r.authority, authority)):
        for name, rtype, *rdatas in rrs:
            section.append(dns.rrset.from_text(name, 300, "IN", rtype, *rdatas))
    r.set_rcode(rcode)
    return q, r.to_wire()


SOA = ("test.", "SOA", "ns.test. hostmaster.test. 1 3600 600 86400 300")
CASES = {
    "mx": reply("example.test.", "MX", [("example.test.", "MX", "10 mx1.example.test.", "20 mx2.example.test.",
                                         "20 Other.Example.NET.")]),
    "null-mx": reply("nullmx.test.", "MX", [("nullmx.test.", "MX", "0 .")]),
    "a": reply("mx1.example.test.", "A", [("mx1.example.test.", "A", "127.0.0.2", "192.0.2.77")]),
    "aaaa": reply("mx1.example.test.", "AAAA", [("mx1.example.test.", "AAAA", "::2", "2001:db8::1:0:0:1",
                                                 "::ffff:192.0.2.1", "2001:db8:0:1:1:1:1:1", "fe80::")]),
    "nxdomain": reply("nx.test.", "MX", authority=[SOA], rcode=dns.rcode.NXDOMAIN),
    "nodata": reply("implicit.test.", "MX", authority=[SOA]),
    "cname-chain": reply("alias.test.", "MX", [("alias.test.", "CNAME", "alias2.test."),
                                               ("alias2.test.", "CNAME", "target.test."),
                                               ("target.test.", "MX", "5 mx1.example.test.")]),
    "cname-dangling": reply("alias.test.", "A", [("alias.test.", "CNAME", "target.test.")]),
    "cname-nxdomain": reply("alias.test.", "A", [("alias.test.", "CNAME", "gone.test.")],
                            authority=[SOA], rcode=dns.rcode.NXDOMAIN),
    "odd-characters": reply("odd.test.", "MX", [("odd.test.", "MX", r"10 we\.ird\@x\200\032y.odd.test.")]),
    "other-types-too": reply("example.test.", "MX", [("example.test.", "TXT", '"hello" "world"'),
                                                     ("example.test.", "MX", "10 mx1.example.test."),
                                                     ("example.test.", "NS", "ns.example.test.")],
                             authority=[SOA]),
    "servfail": reply("example.test.", "MX", rcode=dns.rcode.SERVFAIL),
    "refused": reply("example.test.", "A", rcode=dns.rcode.REFUSED),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_answer_as_dnspython(case):
    query, wire = CASES[case]
    want = dnspython_view(query, wire)
    assert want[0] in ("records", "NXDOMAIN", "NoAnswer", "rcode")      # the case is what it says
    assert shim_view(query, wire) == want


def test_the_cases_use_compression_and_cover_the_verdicts():
    query, wire = CASES["mx"]
    assert wire.count(b"\xc0") >= 3                     # exchange names point into the question
    got = [dnspython_view(q, w)[0] for q, w in CASES.values()]
    assert sorted(set(got)) == ["NXDOMAIN", "NoAnswer", "rcode", "records"]
    assert shim_view(*CASES["null-mx"]) == ("records", [[0, "."]])
    assert shim_view(*CASES["odd-characters"]) == ("records", [[10, r"we\.ird\@x\200\032y.odd.test."]])
    assert shim_view(*CASES["cname-chain"]) == ("records", [[5, "mx1.example.test."]])


def _with_header(wire, **counts):
    """wire with header fields replaced: id, flags, qd, an, ns, ar."""
    fields = ["id", "flags", "qd", "an", "ns", "ar"]
    h = [int.from_bytes(wire[i:i + 2], "big") for i in range(0, 12, 2)]
    for k, v in counts.items():
        h[fields.index(k)] = v
    return b"".join(x.to_bytes(2, "big") for x in h) + wire[12:]


def test_duplicate_records_are_one_as_in_dnspython():
    q, wire = reply("example.test.", "MX", [("example.test.", "MX", "10 MX1.example.test.")])
    rr = wire[len(q.to_wire()):]                      # the answer RR (its names are compressed)
    upper = rr.replace(b"MX1", b"mx1")                # the same record, name in another case
    wire2 = _with_header(wire + rr + upper, an=3)
    assert dnspython_view(q, wire2) == shim_view(q, wire2) == ("records", [[10, "MX1.example.test."]])


def test_replies_that_are_not_ours():
    q, wire = CASES["mx"]
    other = dns.message.make_query("example.test.", "A")
    for bad in (_with_header(wire, id=(q.id + 1) & 0xFFFF),            # another ID
                _with_header(wire, flags=0x0100),                       # QR clear: a query
                reply("example.test.", "A", [("example.test.", "A", "192.0.2.1")])[1]):  # another question
        assert dnspython_view(q, bad) == shim_view(q, bad) == ("notours",)
    assert shim_view(other, wire) == ("notours",)


def test_every_truncation_is_a_dns_exception():
    n = 0
    for case in sorted(CASES):
        query, wire = CASES[case]
        for cut in range(len(wire)):
            assert dnspython_view(query, wire[:cut]) == ("error",), (case, cut)
            assert shim_view(query, wire[:cut]) == ("error",), (case, cut)
            with pytest.raises(shim.exception.FormError):
                shim._wire.parse(wire[:cut])
            n += 1
    assert n > 1000
    query, wire = CASES["mx"]
    assert shim_view(query, wire + b"\x00") == dnspython_view(query, wire + b"\x00") == ("error",)  # trailing junk


def _hand_reply(owner):
    """A reply to "a.test MX" whose one answer record has the given owner name bytes."""
    q = dns.message.make_query("a.test.", "MX")
    head = _with_header(q.to_wire(), flags=0x8180, an=1)
    return q, head + owner + b"\x00\x0f\x00\x01\x00\x00\x01\x2c\x00\x04\x00\x0a\xc0\x0c"


def test_pointer_loops_and_bad_pointers():
    q = dns.message.make_query("a.test.", "MX")
    base = len(q.to_wire())
    cases = {
        "to itself": b"\xc0" + bytes([base]),
        "forwards": b"\xc0" + bytes([base + 2]) + b"\x01x\x00",
        "label then back to itself": b"\x01x\xc0" + bytes([base]),
        "into the header": b"\xc0\x02",
        "past the end": b"\xff\xff",
        "label type 01": b"\x40",
        "label type 10": b"\x80",
    }
    for what, owner in cases.items():
        q, wire = _hand_reply(owner)
        assert dnspython_view(q, wire) == ("error",), what
        assert shim_view(q, wire) == ("error",), what
    q, wire = _hand_reply(b"\xc0\x0c")             # a good pointer (to the question): accepted
    assert dnspython_view(q, wire) == shim_view(q, wire) == ("records", [[10, "a.test."]])


def test_pointers_that_only_look_fine():
    """A forward pointer to a well-formed name, and a target whose label runs into the pointer
    itself: each would parse to a name if the rule were not checked (dnspython rejects both)."""
    q = dns.message.make_query("a.test.", "MX")
    head = _with_header(q.to_wire(), flags=0x8180, an=2)
    first, ttl = len(head), b"\x00\x00\x01\x2c"
    mx_rest = b"\x00\x0f\x00\x01" + ttl + b"\x00\x04\x00\x0a\xc0\x0c"
    opaque = b"\xc0\x0c\xff\x00\x00\x01" + ttl
    forward = head + b"\xc0" + bytes([first + 16 + 12]) + mx_rest + opaque + b"\x00\x03\x01x\x00"
    p = first + 14
    overlap = head + opaque + b"\x00\x02\x03y" + b"\xc0" + bytes([p - 2]) + mx_rest
    for what, wire in (("forward", forward), ("overlap", overlap)):
        assert dnspython_view(q, wire) == shim_view(q, wire) == ("error",), what


def test_pointer_chains_and_name_length_limits():
    # Names in a record of a private type (opaque to both): x.a.test., then y.<previous> each
    # by a pointer. A second record's owner points at one of them: a chain of `hops` pointers.
    # 16 hops are allowed, 17 are not (dnspython's limit).
    for hops, ok in ((16, True), (17, False)):
        q = dns.message.make_query("a.test.", "MX")
        head = _with_header(q.to_wire(), flags=0x8180, an=2)
        first = len(head) + 12
        chain = b"\x01x\xc0\x0c"
        for i in range(hops - 2):
            chain += b"\x01y\xc0" + bytes([first + 4 * i])
        rr1 = b"\xc0\x0c\xff\x00\x00\x01\x00\x00\x01\x2c" + len(chain).to_bytes(2, "big") + chain
        owner = b"\xc0" + bytes([first + len(chain) - 4])
        rr2 = owner + b"\x00\x0f\x00\x01\x00\x00\x01\x2c\x00\x04\x00\x0a\xc0\x0c"
        wire = head + rr1 + rr2
        got = shim_view(q, wire)
        assert got == dnspython_view(q, wire) and got == (("NoAnswer",) if ok else ("error",)), (hops, got)
    # a name of 255 bytes is fine, 256 is not
    for length, ok in ((255, True), (256, False)):
        labels, left = [], length - 1
        while left > 0:
            n = min(63, left - 1)
            labels.append(b"x" * n)
            left -= n + 1
        owner = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
        assert len(owner) == length
        q, wire = _hand_reply(owner)
        got = shim_view(q, wire)
        assert got == dnspython_view(q, wire) and (got[0] == "NoAnswer") == ok, (length, got)


BASES = sorted(CASES)
SHIM_READS = (1, 2, 5, 6, 12, 15, 16, 28)   # A NS CNAME SOA PTR MX TXT AAAA


def opaque_unread(wire):
    """wire with every record the shim never reads (other types; A/AAAA outside class IN) turned
    into a private type whose data nobody checks; None when the records cannot be walked."""
    w = bytearray(wire)

    def skip_name(pos):
        while w[pos] != 0:
            if w[pos] >= 0xC0:
                return pos + 2
            pos += 1 + w[pos]
        return pos + 1
    try:
        counts = [int.from_bytes(w[i:i + 2], "big") for i in (4, 6, 8, 10)]
        pos = 12
        for _ in range(counts[0]):
            pos = skip_name(pos) + 4
        for _ in range(sum(counts[1:])):
            pos = skip_name(pos)
            rtype, rclass = int.from_bytes(w[pos:pos + 2], "big"), int.from_bytes(w[pos + 2:pos + 4], "big")
            if rtype not in SHIM_READS or (rtype in (1, 28) and rclass != 1):
                w[pos:pos + 2] = b"\xff\x00"
            pos += 10 + int.from_bytes(w[pos + 8:pos + 10], "big")
    except IndexError:
        return None
    return bytes(w)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_byte_flips_agree_or_raise(data):
    case = data.draw(st.sampled_from(BASES))
    query, wire = CASES[case]
    wire = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    wire = bytes(wire)
    want = dnspython_view(query, wire)
    got = shim_view(query, wire)                    # anything but a DNSException fails here
    if got == want:
        return
    # The shim may be stricter: it rejects (error / not ours), or sees TC and would ask again
    # over TCP ...
    if got in (("error",), ("notours",)) or (got == ("tc",) and wire[2] & 0x02):
        return
    # ... and it does not check the data of record types it never reads (dnspython checks some
    # 70 types): with those made opaque, both must agree.
    norm = opaque_unread(wire)
    assert norm is not None and norm != wire, (case, got, want)
    assert shim_view(query, norm) == got == dnspython_view(query, norm), (case, got, want)


# ---- live, against a private dnsmasq --------------------------------------------------------------

BIG = ["127.0.3.%d" % i for i in range(1, 41)]      # 40 A records: over 512 bytes, so TC over UDP
LIVE = dict(
    mx=[("example.test", "mx1.example.test", 10), ("example.test", "mx2.example.test", 20),
        ("target.test", "mx1.example.test", 5)],
    hosts={"mx1.example.test": ["127.0.0.2", "127.0.0.12", "::2"], "mx2.example.test": "127.0.0.3",
           "v6.test": "2001:db8::1:0:0:1", "implicit.test": "127.0.0.4", "target.test": "127.0.0.5",
           "nullmx.test": "127.0.0.9", "big.test": BIG},
    null_mx=["nullmx.test"],
    cnames=[("alias.test", "target.test")])
QUERIES = [("example.test", "MX"), ("nullmx.test", "MX"), ("mx1.example.test", "A"), ("mx1.example.test", "AAAA"),
           ("v6.test", "AAAA"), ("implicit.test", "MX"), ("alias.test", "MX"), ("alias.test", "A"),
           ("big.test", "A"), ("nope.test", "MX"), ("nope.test", "AAAA"), ("example.com", "MX")]
DOMAINS = ["example.test", "alias.test", "implicit.test", "nullmx.test", "nope.test", "example.com", "big.test",
           "[127.0.0.1]"]

# Resolves QUERIES and DOMAINS through whatever `dns` package is on the path: the same script
# runs on CPython (dnspython) and on MicroPython (the shim). Addresses are sorted: dnsmasq
# rotates them between answers. The job comes in a file: this MicroPython build dies ("FATAL:
# uncaught NLR") on any command-line argument of 256 characters or more.
PROBE = r'''
import sys, json
import dns.exception
from tinymta.mx import make_resolver, resolve_mx, DNSFailure
with open(sys.argv[1]) as f:
    job = json.loads(f.read())
queries, domains = job["queries"], job["domains"]
r = make_resolver([("127.0.0.1", job["port"])], timeout=1)
out = {"resolve": [], "mx": []}
for name, t in queries:
    try:
        recs = [[rd.preference, str(rd.exchange)] if t == "MX" else rd.address for rd in r.resolve(name, t)]
        out["resolve"].append(["records", sorted(recs)])
    except dns.exception.DNSException as e:
        out["resolve"].append([type(e).__name__])
for d in domains:
    try:
        out["mx"].append(["hosts", [[h, sorted(a)] for h, a in resolve_mx(d, r)]])
    except DNSFailure as e:
        out["mx"].append(["fail", e.permanent, e.status])
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    with Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), **LIVE) as d:
        yield d


def live_view(resolver, name, rdtype, exc_base):
    try:
        return ("records", sorted(rdata_view(rd) for rd in resolver.resolve(name, rdtype)))
    except exc_base as e:
        return (type(e).__name__,)


def resolvers(server, timeout=1.0):
    return real_mx.make_resolver([server], timeout=timeout), shim_mx.make_resolver([server], timeout=timeout)


@needs_dnsmasq
def test_live_resolve_same_as_dnspython(dm):
    real, mine = resolvers(dm.server)
    assert isinstance(mine, shim.resolver.Resolver) and not isinstance(real, shim.resolver.Resolver)
    views = []
    for name, rdtype in QUERIES:
        want = live_view(real, name, rdtype, dns.exception.DNSException)
        assert live_view(mine, name, rdtype, shim.exception.DNSException) == want, (name, rdtype)
        views.append(want)
    kinds = dict(zip(QUERIES, views))
    assert kinds[("nullmx.test", "MX")] == ("records", [[0, "."]])
    assert kinds[("alias.test", "MX")] == ("records", [[5, "mx1.example.test."]])
    assert kinds[("big.test", "A")] == ("records", sorted(BIG))      # all 40: the TCP retry worked
    assert kinds[("v6.test", "AAAA")] == ("records", ["2001:db8::1:0:0:1"])
    assert kinds[("nope.test", "MX")] == ("NXDOMAIN",) and kinds[("implicit.test", "MX")] == ("NoAnswer",)
    assert kinds[("example.com", "MX")] == ("NoNameservers",)        # dnsmasq refuses what is not local


def mx_view(mod, domain, resolver):
    try:
        return ("hosts", [(h, sorted(a)) for h, a in mod.resolve_mx(domain, resolver, rng=random.Random(7))])
    except mod.DNSFailure as e:
        return ("fail", e.permanent, e.status)


@needs_dnsmasq
def test_live_resolve_mx_same_with_both_resolvers(dm):
    real, mine = resolvers(dm.server)
    got = {}
    for domain in DOMAINS:
        got[domain] = mx_view(real_mx, domain, real)
        assert mx_view(shim_mx, domain, mine) == got[domain], domain
    assert got["example.test"] == ("hosts", [("mx1.example.test", ["127.0.0.12", "127.0.0.2", "::2"]),
                                             ("mx2.example.test", ["127.0.0.3"])])
    assert got["nullmx.test"] == ("fail", True, "5.1.10") and got["nope.test"] == ("fail", True, "5.1.2")
    assert got["example.com"] == ("fail", False, "4.4.3")


class Responder:
    """A UDP 'nameserver' on loopback: handler(query message) -> [wire datagrams to send back]."""

    def __init__(self, handler, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.server = self.sock.getsockname()
        self.handler, self.asked = handler, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            self.asked += 1
            for out in self.handler(dns.message.from_wire(data)):
                self.sock.sendto(out, peer)

    def close(self):
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def responder(handler, host="127.0.0.1"):
    r = Responder(handler, host)
    try:
        yield r
    finally:
        r.close()


def _answer_a(q, address="192.0.2.9"):
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", address))
    return r


def test_wrong_id_and_wrong_question_are_ignored_then_the_real_reply_counts():
    def handler(q):
        stray = _answer_a(q, "192.0.2.66")
        stray.id = (q.id + 1) & 0xFFFF
        other = _answer_a(dns.message.make_query("other.test.", "A"), "192.0.2.67")
        other.id = q.id
        return [stray.to_wire(), other.to_wire(), _answer_a(q).to_wire()]

    with responder(handler) as srv:
        for res in resolvers(srv.server):
            assert [rd.address for rd in res.resolve("x.test", "A")] == ["192.0.2.9"]
        assert srv.asked == 2                               # one query each: nothing was retried


def test_servfail_drops_the_server_and_the_next_one_answers():
    def servfail(q):
        r = dns.message.make_response(q)
        r.set_rcode(dns.rcode.SERVFAIL)
        return [r.to_wire()]

    with responder(servfail) as bad, responder(lambda q: [_answer_a(q).to_wire()], "127.0.0.2") as good:
        for mod in (real_mx, shim_mx):
            only_bad = mod.make_resolver([bad.server], timeout=0.5)
            with pytest.raises(mod.dns.resolver.NoNameservers):
                only_bad.resolve("x.test", "A")
            both = mod.make_resolver([bad.server, good.server], timeout=0.5)
            assert [rd.address for rd in both.resolve("x.test", "A")] == ["192.0.2.9"]
        assert bad.asked == 4 and good.asked == 2          # SERVFAIL is not asked again


def test_malformed_udp_reply_is_ignored_as_noise():
    cut = lambda q: [q.to_wire()[:2] + b"\x81\x80\x00\x01\x00\x01"]    # noqa: E731 (cut short)
    with responder(cut) as srv:
        for mod in (real_mx, shim_mx):
            with pytest.raises(mod.dns.exception.Timeout):
                mod.make_resolver([srv.server], timeout=0.3).resolve("x.test", "A")
    garbage_first = lambda q: [b"\xff" * 7, cut(q)[0], _answer_a(q).to_wire()]   # noqa: E731
    with responder(garbage_first) as srv:
        for res in resolvers(srv.server):
            assert [rd.address for rd in res.resolve("x.test", "A")] == ["192.0.2.9"]


def test_silent_server_times_out_within_the_lifetime():
    with responder(lambda q: []) as srv:
        for mod in (real_mx, shim_mx):
            res = mod.make_resolver([srv.server], timeout=0.3)     # lifetime 0.6 s
            t0 = time.monotonic()
            with pytest.raises(mod.dns.exception.Timeout):
                res.resolve("x.test", "A")
            assert 0.5 < time.monotonic() - t0 < 1.5
        assert srv.asked >= 4                               # retried within the lifetime


def test_names_the_shim_cannot_ask_raise_before_any_query():
    with responder(lambda q: []) as srv:
        r = shim_mx.make_resolver([srv.server], timeout=0.3)
        for bad in ("b\u00fccher.test", "a..test", "x" * 64 + ".test", ("a" * 60 + ".") * 5 + "test"):
            with pytest.raises(shim.exception.DNSException):
                r.resolve(bad, "MX")
        with pytest.raises(shim.exception.DNSException):
            r.resolve("example.test", "TXT")                    # only A, AAAA, MX and CNAME
        assert srv.asked == 0


@needs_dnsmasq
def test_resolv_conf_and_no_configuration(tmp_path, dm):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example.test\nnameserver 127.0.0.1\nnameserver ::1\nnameserver 127.0.0.1\n")
    r = shim.resolver.Resolver(filename=str(conf))
    assert r.nameservers == ["127.0.0.1", "::1"] and r.search == []
    r.nameservers, r.nameserver_ports, r.lifetime = ["127.0.0.1"], {"127.0.0.1": dm.port}, 2
    assert [rd.address for rd in r.resolve("mx2.example.test", "A")] == ["127.0.0.3"]
    none = shim.resolver.Resolver(filename=str(tmp_path / "missing"))
    assert none.nameservers == []
    with pytest.raises(shim.resolver.NoNameservers) as ei:
        none.resolve("example.test", "MX")
    assert "no nameservers configured" in str(ei.value)
    assert shim.resolver.Resolver(configure=False).nameservers == []


@needs_dnsmasq
def test_dhcp_server_followed_when_wifi_comes_up_late(tmp_path, dm, monkeypatch):
    """A board's resolver built before Wi-Fi is up (no resolv.conf, no address yet) must start
    working once DHCP gives a server, and follow a new one, not stay empty for good."""
    import types
    iface = {"dns": "0.0.0.0"}
    network = types.ModuleType("network")
    network.STA_IF = 0

    class WLAN:
        def __init__(self, which):
            pass

        def ifconfig(self):
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", iface["dns"])
    network.WLAN = WLAN
    monkeypatch.setitem(sys.modules, "network", network)
    r = shim.resolver.Resolver(filename=str(tmp_path / "missing"))
    r.lifetime = 2
    with pytest.raises(shim.resolver.NoNameservers):
        r.resolve("mx2.example.test", "A")                 # Wi-Fi not up yet
    iface["dns"] = "127.0.0.1"
    r.nameserver_ports = {"127.0.0.1": dm.port, "127.0.0.2": dm.port}
    assert [rd.address for rd in r.resolve("mx2.example.test", "A")] == ["127.0.0.3"]
    iface["dns"] = "127.0.0.2"                              # a new lease, another server (silent here)
    with pytest.raises(shim.resolver.NoNameservers):
        r.resolve("mx2.example.test", "A")
    assert r.nameservers == ["127.0.0.2"]
    fixed = shim.resolver.Resolver(configure=False)          # servers given: never replaced
    fixed.nameservers = ["127.0.0.1"]
    fixed.nameserver_ports = {"127.0.0.1": dm.port}
    fixed.resolve("mx2.example.test", "A")
    assert fixed.nameservers == ["127.0.0.1"]


@needs_dnsmasq
@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="MicroPython unix port not installed")
def test_micropython_resolves_as_dnspython_does(dm, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"port": dm.port, "queries": QUERIES, "domains": DOMAINS}))
    args = [str(probe), str(job)]
    runs = {}
    for runtime, cmd, env in (
            ("cpython", [sys.executable], dict(os.environ, PYTHONPATH=ROOT)),
            ("micropython", [MICROPYTHON, "-X", "heapsize=512K"], dict(os.environ, MICROPYPATH=ROOT + ":" + SHIM_LIB))):
        p = subprocess.run(cmd + args, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, (runtime, p.stdout, p.stderr)
        runs[runtime] = json.loads(p.stdout)
    assert runs["micropython"] == runs["cpython"]
    kinds = [r[0] for r in runs["cpython"]["resolve"]]
    assert {"records", "NXDOMAIN", "NoAnswer", "NoNameservers"} <= set(kinds)
    assert ["records", sorted(BIG)] in runs["cpython"]["resolve"]
