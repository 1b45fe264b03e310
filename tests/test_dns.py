"""tinymta.mx against a private dnsmasq on loopback (tests/dnsmasqfix.py; protocol.md §1.8, §2.2).

DNS goes only to resolvers these tests start on 127.0.0.1: dnsmasq, a socket that never answers,
a port nothing listens on, or a tiny SERVFAIL responder. Never to the system resolver.
"""
import random
import socket
import threading
import time

import dns.message
import dns.rcode
import pytest

from dnsmasqfix import Dnsmasq, dnsmasq, free_port, needs_dnsmasq  # noqa: F401 (dnsmasq: fixture)
from tinymta.mx import DNSFailure, make_resolver, resolve_mx

pytestmark = needs_dnsmasq

RECORDS = dict(
    mx=[("example.test", "mx2.example.test", 20), ("example.test", "mx1.example.test", 10),
        ("example.test", "mx3.example.test", 30),
        ("equal.test", "a.equal.test", 10), ("equal.test", "b.equal.test", 10),
        ("equal.test", "c.equal.test", 20),
        ("noaddr.test", "missing.noaddr.test", 10),           # MX host with no address ...
        ("partial.test", "missing.partial.test", 5), ("partial.test", "mx.partial.test", 10),
        ("slowhost.test", "mx.timeout.test", 5), ("slowhost.test", "mx.partial.test", 10),
        ("v6only.test", "mx.v6only.test", 10),
        ("target.test", "mx1.example.test", 5),
        ("loop.test", "a.loop.test", 10), ("loop.test", "me.loop.test", 20),
        ("loop.test", "b.loop.test", 30), ("loop.test", "c.loop.test", 20),
        ("onlyme.test", "me.loop.test", 10)],
    hosts={"mx1.example.test": ["127.0.0.2", "127.0.0.12", "::2"], "mx2.example.test": "127.0.0.3",
           "mx3.example.test": "::3",
           "a.equal.test": "127.0.1.1", "b.equal.test": "127.0.1.2", "c.equal.test": "127.0.1.3",
           "noaddr.test": "127.0.0.66",                       # ... while the domain has an A: unused
           "mx.partial.test": "127.0.0.7", "mx.v6only.test": "::7",
           "implicit.test": ["127.0.0.4", "::4"], "nullmx.test": "127.0.0.9", "target.test": "127.0.0.5",
           "a.loop.test": "127.0.2.1", "b.loop.test": "127.0.2.2", "c.loop.test": "127.0.2.3",
           "me.loop.test": "127.0.2.9"},
    null_mx=["nullmx.test"],
    cnames=[("alias.test", "target.test")],
    timeout=["timeout.test"],
    txt=["nomail.test"])


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    with Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), **RECORDS) as d:
        yield d


@pytest.fixture
def res(dm):
    return make_resolver([dm.server], timeout=0.5)


def names(hosts):
    return [h for h, _ in hosts]


def fails(domain, resolver, **kw):
    with pytest.raises(DNSFailure) as ei:
        resolve_mx(domain, resolver, **kw)
    return ei.value


class BlackHole:
    """A UDP 'resolver' on loopback that never answers and counts what it receives."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.server = self.sock.getsockname()

    def received(self):
        self.sock.setblocking(False)
        n = 0
        while True:
            try:
                self.sock.recv(4096)
                n += 1
            except OSError:
                return n


@pytest.fixture
def hole():
    h = BlackHole()
    yield h
    h.sock.close()


# ---- order and addresses -----------------------------------------------------------------------

def test_preference_order_and_every_address(res):
    for _ in range(5):  # dnsmasq rotates its answers: the order must not depend on that
        hosts = resolve_mx("example.test", res, rng=random.Random(1))
        assert names(hosts) == ["mx1.example.test", "mx2.example.test", "mx3.example.test"]
        addrs = dict(hosts)
        assert sorted(addrs["mx1.example.test"][:2]) == ["127.0.0.12", "127.0.0.2"]  # both A ...
        assert addrs["mx1.example.test"][2:] == ["::2"]                               # ... then AAAA
        assert addrs["mx2.example.test"] == ["127.0.0.3"]
        assert addrs["mx3.example.test"] == ["::3"]  # a host with AAAA only is used


def test_equal_preferences_shuffled_by_rng(res):
    orders = set()
    for seed in range(20):
        hosts = names(resolve_mx("equal.test", res, rng=random.Random(seed), families=("A",)))
        assert hosts[2] == "c.equal.test"  # the shuffle stays within a preference
        assert hosts == names(resolve_mx("equal.test", res, rng=random.Random(seed), families=("A",)))
        orders.add(tuple(hosts[:2]))
    assert orders == {("a.equal.test", "b.equal.test"), ("b.equal.test", "a.equal.test")}


def test_equal_preferences_first_40_to_60_percent(res):
    rng = random.Random(5321)
    first = [resolve_mx("equal.test", res, rng=rng, families=("A",))[0][0] for _ in range(1000)]
    assert 400 <= first.count("a.equal.test") <= 600, first.count("a.equal.test")


def test_default_rng_is_the_random_module(res):
    seen = {names(resolve_mx("equal.test", res, families=("A",)))[0] for _ in range(60)}
    assert seen == {"a.equal.test", "b.equal.test"}


def test_families_order_and_ipv4_only(dm, res):
    assert resolve_mx("implicit.test", res) == [("implicit.test", ["127.0.0.4", "::4"])]
    assert resolve_mx("implicit.test", res, families=("AAAA", "A")) == [("implicit.test", ["::4", "127.0.0.4"])]
    before = len(dm.queries())
    assert resolve_mx("v6only.test", res, families=("AAAA",)) == [("mx.v6only.test", ["::7"])]
    assert resolve_mx("implicit.test", res, families=("A",)) == [("implicit.test", ["127.0.0.4"])]
    assert "AAAA" not in [t for t, _ in dm.queries()[before:] if _ == "implicit.test"]
    e = fails("v6only.test", res, families=("A",))  # its only MX host has no A: nowhere to go
    assert (e.permanent, e.status) == (False, "4.4.3")
    with pytest.raises(ValueError):
        resolve_mx("example.test", res, families=("MX",))


def test_cname_is_followed(res):
    assert names(resolve_mx("alias.test", res)) == ["mx1.example.test"]


def test_name_is_normalised(res):
    assert names(resolve_mx("Example.TEST.", res, rng=random.Random(0)))[0] == "mx1.example.test"


# ---- implicit MX and unusable hosts --------------------------------------------------------------

def test_implicit_mx_only_without_mx_records(res):
    assert resolve_mx("implicit.test", res, families=("A",)) == [("implicit.test", ["127.0.0.4"])]
    # noaddr.test has an MX whose host has no address, and an A of its own: never use that A (M4)
    e = fails("noaddr.test", res)
    assert (e.permanent, e.status) == (False, "4.4.3")
    assert "missing.noaddr.test" in e.text and "127.0.0.66" not in e.text


def test_domain_without_mx_or_address_is_permanent_5_4_4(res):
    # it exists (a TXT record), but has no MX and no A/AAAA: nowhere to deliver, ever (as Postfix)
    e = fails("nomail.test", res)
    assert (e.permanent, e.status) == (True, "5.4.4") and "nomail.test" in e.text
    e = fails("nomail.test", res, families=("A",))
    assert (e.permanent, e.status) == (True, "5.4.4")


def test_host_without_address_is_skipped(res):
    assert resolve_mx("partial.test", res) == [("mx.partial.test", ["127.0.0.7"])]


def test_host_whose_lookup_times_out_is_skipped(res):
    t0 = time.monotonic()
    assert resolve_mx("slowhost.test", res) == [("mx.partial.test", ["127.0.0.7"])]
    assert time.monotonic() - t0 < 3  # one lifetime (1 s) for the dead host: no AAAA try after it


def test_own_name_drops_it_and_every_record_not_better(res):
    assert names(resolve_mx("loop.test", res, own_names=["ME.loop.test."])) == ["a.loop.test"]
    e = fails("onlyme.test", res, own_names=["me.loop.test"])
    assert (e.permanent, e.status) == (True, "5.4.6")


# ---- failures ----------------------------------------------------------------------------------

def test_null_mx_is_permanent_5_1_10_without_fallback(dm, res):
    before = len(dm.queries())
    e = fails("nullmx.test", res)
    assert (e.permanent, e.status) == (True, "5.1.10")
    assert "accepts no mail" in e.text and str(e).startswith("5.1.10 ")
    assert dm.queries()[before:] == [("MX", "nullmx.test")]  # its A record is never asked for


def test_nxdomain_is_permanent_5_1_2(res):
    e = fails("nxdomain-test.test", res)
    assert (e.permanent, e.status) == (True, "5.1.2")
    assert "nxdomain-test.test" in e.text


def test_timeout_is_temporary_4_4_3(res):
    t0 = time.monotonic()
    e = fails("timeout.test", res)
    assert (e.permanent, e.status) == (False, "4.4.3") and "timed out" in e.text
    assert time.monotonic() - t0 < 3


def test_refused_is_temporary(res):
    e = fails("example.com", res)  # not local: dnsmasq refuses, forwards nothing
    assert (e.permanent, e.status) == (False, "4.4.3")


def test_servfail_is_temporary():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                continue
            r = dns.message.make_response(dns.message.from_wire(data))
            r.set_rcode(dns.rcode.SERVFAIL)
            sock.sendto(r.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        e = fails("example.test", make_resolver([sock.getsockname()], timeout=0.5))
        assert (e.permanent, e.status) == (False, "4.4.3") and "SERVFAIL" in e.text
    finally:
        stop.set()
        t.join(2)
        sock.close()


def test_no_resolver_listening_is_temporary(hole):
    for server in (("127.0.0.1", free_port()), hole.server):  # nothing there; never answers
        t0 = time.monotonic()
        e = fails("example.test", make_resolver([server], timeout=0.3))
        assert (e.permanent, e.status) == (False, "4.4.3")
        assert time.monotonic() - t0 < 2
    assert hole.received() >= 1


# ---- no DNS at all -------------------------------------------------------------------------------

def test_ip_literals_need_no_dns(hole):
    res = make_resolver([hole.server], timeout=0.3)
    assert resolve_mx("[127.0.0.2]", res) == [("127.0.0.2", ["127.0.0.2"])]
    assert resolve_mx("[IPv6:::1]", res) == [("::1", ["::1"])]
    assert resolve_mx("[ipv6:2001:DB8::1]", res) == [("2001:db8::1", ["2001:db8::1"])]
    for bad in ("[127.0.0.256]", "[::1]", "[IPv6:127.0.0.1]", "[]", "[example.test]"):
        e = fails(bad, res)
        assert (e.permanent, e.status) == (True, "5.1.3"), bad
    for bad in ("a..test", "", ".", "x" * 64 + ".test", "a b.test"):
        e = fails(bad, res)
        assert (e.permanent, e.status) == (True, "5.1.3"), bad
    assert hole.received() == 0


# ---- the resolver and the fixture ----------------------------------------------------------------

def test_make_resolver_uses_only_the_given_servers():
    r = make_resolver([("127.0.0.1", 5353), ("::1", 53), ("127.0.0.1", 5353)], timeout=2)
    assert list(r.nameservers) == ["127.0.0.1", "::1"]
    assert r.nameserver_ports == {"127.0.0.1": 5353, "::1": 53}
    assert (r.timeout, r.lifetime) == (2, 8)
    assert list(r.search) == []  # configure=False: nothing from /etc/resolv.conf
    assert make_resolver([("127.0.0.1", 53)], timeout=1, lifetime=3).lifetime == 3
    with pytest.raises(ValueError):
        make_resolver([("127.0.0.1", 53), ("127.0.0.1", 5353)])


def test_dnsmasq_fixture_factory(dnsmasq):
    a = dnsmasq(mx=[("one.test", "mx.one.test", 10)], hosts={"mx.one.test": "127.0.0.8"})
    b = dnsmasq(hosts={"one.test": "127.0.0.9"})  # a second server: different records
    assert a.port != b.port and a.proc.pid != b.proc.pid
    assert resolve_mx("one.test", make_resolver([a.server])) == [("mx.one.test", ["127.0.0.8"])]
    assert resolve_mx("one.test", make_resolver([b.server])) == [("one.test", ["127.0.0.9"])]
    assert ("MX", "one.test") in a.queries()
    proc = a.proc
    a.stop()
    assert proc.poll() is not None
