"""tinymta.config on both runtimes: defaults, validation messages, JSON files, CIDR matching.

Plain asserts and argument-less test_* functions: pytest collects them on CPython and
tests/mp_runner.py runs them under MicroPython. TOML-specific tests live in
tests/test_config_toml.py (CPython only).
"""
import binascii
import json
import os
import sys

from tinymta import config
from tinymta.config import spool_admission_limit, ConfigError, from_dict, load, to_json_dict

MICROPYTHON = sys.implementation.name == "micropython"


def _err(d, source="t.json"):
    try:
        from_dict(d, source)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert msg.startswith(source + ": "), msg
        return msg
    raise AssertionError("no ConfigError for %r" % (d,))


def _one(section, key, value):
    return from_dict({section: {key: value}})


def _tmpdir():
    d = "/tmp/tinymta-test-config-" + binascii.hexlify(os.urandom(4)).decode()
    os.mkdir(d)
    return d


def _write(d, name, text):
    path = d + "/" + name
    f = open(path, "wb")
    f.write(text.encode("utf-8") if isinstance(text, str) else text)
    f.close()
    return path


def _cleanup(d):
    for name in os.listdir(d):
        os.remove(d + "/" + name)
    os.rmdir(d)


def test_defaults():
    cfg = load()
    s, sp, r, c = cfg.server, cfg.spool, cfg.relay, cfg.console
    assert s.listen == [("127.0.0.1", 2525)]
    assert s.max_message_size == 1048576 and s.max_recipients == 100 and s.max_connections == 8
    assert [n[3] for n in s.relay_networks] == ["127.0.0.0/8", "::1/128"]
    assert s.relay_domains == [] and s.bare_newlines == "reject" and s.timeout == 300
    assert s.tls_cert is None and s.tls_key is None and s.auth_users_file is None
    assert s.auth_without_tls is False
    assert sp.path == "tinymta.spool" and sp.size == 4 * 1048576
    assert sp.sector_size == 65536 and sp.prog_unit == 4096
    assert r.mode == "mx" and r.smarthost is None and r.tls == "opportunistic"
    assert r.username is None and r.password_file is None and r.ca_file is None
    assert r.dns_servers == [] and r.mx_port == 25
    assert (r.retry_min, r.retry_max, r.max_age) == (300, 3600, 432000)
    assert c.serial is None and c.baud == 115200 and c.socket == "tinymta.sock" and c.password is None
    assert cfg.log.level == "info"
    assert cfg == from_dict({}) and cfg.source == "<defaults>"


def test_hostname_default():
    h = load().server.hostname
    assert isinstance(h, str) and h
    if MICROPYTHON:
        assert h == "tinymta"
    assert _one("server", "hostname", "mx.example.org").server.hostname == "mx.example.org"
    assert _one("server", "hostname", "[192.0.2.1]").server.hostname == "[192.0.2.1]"
    assert "server.hostname: must be a host name" in _err({"server": {"hostname": "bad name"}})
    assert "server.hostname:" in _err({"server": {"hostname": ""}})


def test_error_format():
    msg = _err({"server": {"max_connections": "eight"}}, "bad.toml")
    assert msg == 'bad.toml: server.max_connections: must be an integer >= 1, got "eight"', msg
    assert _err({"server": {"max_connections": 0}}).endswith("must be an integer >= 1, got 0")


def test_unknown_keys_and_sections():
    assert _err({"sever": {}}) == "t.json: sever: unknown section (did you mean server?)"
    assert _err({"bogus": {}}) == "t.json: bogus: unknown section"
    msg = _err({"server": {"max_conections": 3}})
    assert msg == "t.json: server.max_conections: unknown key (did you mean server.max_connections?)", msg
    msg = _err({"server": {"smarthost": "x:25"}})
    assert msg == "t.json: server.smarthost: unknown key (did you mean relay.smarthost?)", msg
    assert _err({"server": {"zzzzzz": 1}}) == "t.json: server.zzzzzz: unknown key"
    assert "server: must be a table" in _err({"server": 5})
    assert "must hold a table of sections" in _err([1])


def test_bool_is_not_int():
    assert "server.max_connections: must be an integer >= 1, got true" in _err({"server": {"max_connections": True}})
    assert "got 8.0" in _err({"server": {"max_connections": 8.0}})
    assert "server.max_message_size:" in _err({"server": {"max_message_size": True}})
    assert "relay.mx_port:" in _err({"relay": {"mx_port": True}})
    assert "server.auth_without_tls: must be true or false, got 1" in _err({"server": {"auth_without_tls": 1}})
    assert "got \"yes\"" in _err({"server": {"auth_without_tls": "yes"}})


def test_sizes():
    def size(v):
        return _one("server", "max_message_size", v).server.max_message_size
    assert size(1000) == 1000 and size("2048") == 2048
    assert size("64K") == 65536 and size("64k") == 65536 and size("64KiB") == 65536
    assert size("1M") == 1048576 and size("1MiB") == 1048576 and size(" 2 mib ") == 2097152
    for bad in ("4MB", "x", "", "1.5M", "-1", 0, -5, 1.5, None, [1]):
        msg = _err({"server": {"max_message_size": bad}})
        assert "server.max_message_size: must be a size >= 1 bytes" in msg, msg
    cfg = from_dict({"spool": {"size": "8M", "sector_size": "64K", "prog_unit": "4K"}})
    assert (cfg.spool.size, cfg.spool.sector_size, cfg.spool.prog_unit) == (8 << 20, 65536, 4096)
    assert from_dict({"spool": {"size": "1G"}}).spool.size == 1 << 30


def test_durations():
    cfg = from_dict({"relay": {"retry_min": "5m", "retry_max": "2h", "max_age": "5d"}, "server": {"timeout": "30s"}})
    assert (cfg.relay.retry_min, cfg.relay.retry_max, cfg.relay.max_age) == (300, 7200, 432000)
    assert cfg.server.timeout == 30
    for bad in ("5 minutes", "1w", 0, True, "", 2.5):
        assert "server.timeout: must be a duration >= 1 s" in _err({"server": {"timeout": bad}})


def test_enums():
    assert _one("server", "bare_newlines", "normalize").server.bare_newlines == "normalize"
    msg = _err({"server": {"bare_newlines": "allow"}})
    assert msg == 't.json: server.bare_newlines: must be one of "reject", "normalize", got "allow"', msg
    assert "relay.mode: must be one of" in _err({"relay": {"mode": "direct"}})
    assert "relay.tls: must be one of" in _err({"relay": {"tls": "yes"}})
    assert "log.level: must be one of" in _err({"log": {"level": "verbose"}})
    assert "log.level:" in _err({"log": {"level": 3}})
    for lvl in ("debug", "info", "warning", "error"):
        assert _one("log", "level", lvl).log.level == lvl


def test_strings():
    assert "spool.path: must be a non-empty string" in _err({"spool": {"path": ""}})
    assert "spool.path:" in _err({"spool": {"path": 3}})
    cfg = from_dict({"console": {"serial": "/dev/ttyACM0", "socket": "", "password": "pw"}})
    assert cfg.console.serial == "/dev/ttyACM0" and cfg.console.socket is None
    assert cfg.console.password == "pw"
    assert _one("console", "serial", None).console.serial is None
    assert "console.serial: must be a string" in _err({"console": {"serial": 5}})
    assert "console.baud: must be an integer >= 1" in _err({"console": {"baud": "fast"}})


def test_hostport():
    p = config.parse_hostport
    assert p("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert p("[::1]:25") == ("::1", 25) and p("[::]:587") == ("::", 587)
    assert p("Mail.Example.ORG:465") == ("mail.example.org", 465)
    assert p("localhost", 25) == ("localhost", 25) and p("[fe80::1]", 53) == ("fe80::1", 53)
    for bad in ("localhost", "::1:25", "[::1:25", "[zz::1]:25", "host:0", "host:65536", "host:",
                "host:2x", ":25", "bad host:25", "1.2.3:25", "256.1.1.1:25", "[1.2.3.4]:25", "*:25"):
        try:
            p(bad)
        except ValueError:
            continue
        raise AssertionError("accepted " + bad)
    assert config.format_hostport(("::1", 25)) == "[::1]:25"
    assert config.format_hostport(("a.b", 25)) == "a.b:25"


def test_listen():
    cfg = _one("server", "listen", ["0.0.0.0:25", "[::]:25", "mta.lan"])
    assert cfg.server.listen == [("0.0.0.0", 25), ("::", 25), ("mta.lan", 25)]
    msg = _err({"server": {"listen": ["127.0.0.1:2525", "[::1]:99999"]}})
    assert msg == 't.json: server.listen: port must be a number 1-65535, got "[::1]:99999"', msg
    assert 'need brackets' in _err({"server": {"listen": ["::1:25"]}})
    assert "server.listen: must be a list of strings (at least one)" in _err({"server": {"listen": []}})
    assert "must be a list of strings" in _err({"server": {"listen": "127.0.0.1:25"}})
    assert "entries must be strings, got 25" in _err({"server": {"listen": [25]}})


def test_dns_servers():
    cfg = _one("relay", "dns_servers", ["127.0.0.1:5353", "[2001:db8::53]", "9.9.9.9"])
    assert cfg.relay.dns_servers == [("127.0.0.1", 5353), ("2001:db8::53", 53), ("9.9.9.9", 53)]
    assert "relay.dns_servers: DNS servers must be IP addresses" in _err({"relay": {"dns_servers": ["dns.lan:53"]}})
    assert "relay.dns_servers: port" in _err({"relay": {"dns_servers": ["1.1.1.1:x"]}})


def test_relay_domains():
    cfg = _one("server", "relay_domains", ["Example.ORG.", "lan"])
    assert cfg.server.relay_domains == ["example.org", "lan"]
    assert config.domain_allowed(cfg, "EXAMPLE.org") and not config.domain_allowed(cfg, "other.org")
    assert config.domain_allowed(load(), "anything.example")
    for bad in ("", "a..b", ".lan", "x y", "a@b"):
        assert "server.relay_domains: bad domain" in _err({"server": {"relay_domains": [bad]}})


def test_parse_ip():
    ip = config.parse_ip
    assert ip("127.0.0.1") == (32, 0x7f000001) and ip("0.0.0.0") == (32, 0)
    assert ip("::1") == (128, 1) and ip("::") == (128, 0)
    assert ip("2001:db8::1") == (128, (0x20010db8 << 96) | 1)
    assert ip("1:2:3:4:5:6:7:8") == (128, 0x00010002000300040005000600070008)
    assert ip("::ffff:127.0.0.1") == (128, (0xffff << 32) | 0x7f000001)
    assert ip("64:ff9b::192.0.2.33") == (128, (0x0064ff9b << 96) | 0xc0000221)
    assert ip("1::") == (128, 1 << 112) and ip("1:2:3:4:5:6:7::") == (128, ip("1:2:3:4:5:6:7:0")[1])
    for bad in ("", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "1.2.3.-4", "a.b.c.d", ":::",
                "1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "12345::", "g::1", "0x1::",
                "1.2.3.4::", ":1::", "1:::2", "::1.2.3", "::ffff:1.2.3.400", None, 5):
        assert ip(bad) is None, bad
    assert config.format_ip(32, 0x0a000001) == "10.0.0.1"
    assert config.format_ip(128, 1) == "0:0:0:0:0:0:0:1"


def test_cidr_ipv4():
    nets = [config.parse_cidr("10.0.0.0/8"), config.parse_cidr("192.168.1.7")]
    m = config.in_networks
    assert m(nets, "10.1.2.3") and m(nets, "10.255.255.255") and not m(nets, "11.0.0.0")
    assert m(nets, "192.168.1.7") and not m(nets, "192.168.1.8")
    assert m(nets, "::ffff:10.9.9.9") and not m(nets, "::ffff:11.0.0.1")  # mapped
    assert m(nets, b"\x0a\x00\x00\x01") and not m(nets, b"\x0b\x00\x00\x01")  # packed
    assert not m(nets, "::1") and not m(nets, "junk") and not m(nets, "") and not m(nets, None)
    assert not m(nets, b"\x0a\x00\x00") and not m([], "10.0.0.1")
    everything = [config.parse_cidr("0.0.0.0/0")]
    assert m(everything, "1.2.3.4") and m(everything, "255.255.255.255") and m(everything, "::ffff:8.8.8.8")
    assert not m(everything, "2001:db8::1")


def test_cidr_ipv6():
    m = config.in_networks
    lo = [config.parse_cidr("::1/128")]
    assert m(lo, "::1") and m(lo, "[::1]") and m(lo, "0:0:0:0:0:0:0:1") and not m(lo, "::2")
    assert not m(lo, "127.0.0.1")
    nets = [config.parse_cidr("2001:db8::/32"), config.parse_cidr("fe80::/10")]
    assert m(nets, "2001:db8:ffff::1") and not m(nets, "2001:db9::1")
    assert m(nets, "fe80::1%eth0") and m(nets, "febf::1") and not m(nets, "fec0::1")
    assert m(nets, bytes([0x20, 0x01, 0x0d, 0xb8]) + bytes(12))
    assert m([config.parse_cidr("::/0")], "2001:db8::1")
    mapped = [config.parse_cidr("::ffff:0:0/96")]
    assert m(mapped, "::ffff:1.2.3.4") and m(mapped, "1.2.3.4")  # one address, two spellings
    assert m([config.parse_cidr("::ffff:127.0.0.0/104")], "127.0.0.1")


def test_cidr_errors():
    for bad, why in (("10.0.0.0/33", "prefix length must be 0-32"), ("10.0.0.0/-1", "prefix length"),
                     ("10.0.0.0/", "prefix length"), ("10.0.0.0/x", "prefix length"),
                     ("::1/129", "prefix length must be 0-128"), ("::/0128", "prefix length"),
                     ("10.0.0/8", "not an IPv4 or IPv6 network"), ("", "not an IPv4"),
                     ("example.org/8", "not an IPv4"), ("::1::/64", "not an IPv4"),
                     ("10.0.0.1/8", 'host bits set (did you mean "10.0.0.0/8"?)'),
                     ("2001:db8::1/32", 'host bits set (did you mean "2001:db8:0:0:0:0:0:0/32"?)')):
        try:
            config.parse_cidr(bad)
        except ValueError as e:
            assert why in str(e), (bad, str(e))
            continue
        raise AssertionError("accepted " + bad)
    msg = _err({"server": {"relay_networks": ["192.168.0.0/16", "10.0.0.0/33"]}})
    assert msg == 't.json: server.relay_networks: prefix length must be 0-32, got "10.0.0.0/33"', msg


def test_ip_allowed():
    cfg = load()
    assert config.ip_allowed(cfg, "127.0.0.1") and config.ip_allowed(cfg, "127.200.0.9")
    assert config.ip_allowed(cfg, "::1") and config.ip_allowed(cfg, "::ffff:127.0.0.1")
    assert not config.ip_allowed(cfg, "192.168.1.10") and not config.ip_allowed(cfg, "::2")
    lan = _one("server", "relay_networks", ["192.168.1.0/24"])
    assert config.ip_allowed(lan, "192.168.1.10") and not config.ip_allowed(lan, "127.0.0.1")
    assert not config.ip_allowed(_one("server", "relay_networks", []), "127.0.0.1")


def test_relay_modes():
    r = from_dict({"relay": {"mode": "smarthost", "smarthost": "smtp.example.org"}}).relay
    assert r.tls == "starttls" and r.smarthost == ("smtp.example.org", 587)
    r = from_dict({"relay": {"mode": "smarthost", "smarthost": "smtp.example.org", "tls": "implicit"}}).relay
    assert r.smarthost == ("smtp.example.org", 465)
    r = from_dict({"relay": {"mode": "smarthost", "smarthost": "[::1]:2526", "tls": "none"}}).relay
    assert r.smarthost == ("::1", 2526) and r.tls == "none"
    assert from_dict({"relay": {"tls": "starttls"}}).relay.tls == "starttls"  # mandatory TLS to MX
    assert from_dict({"relay": {"tls": "none"}}).relay.tls == "none"
    msg = _err({"relay": {"mode": "smarthost"}})
    assert msg == 't.json: relay.smarthost: required when relay.mode is "smarthost"', msg
    assert "relay.smarthost: required" in _err({"relay": {"mode": "smarthost", "smarthost": ""}})
    assert "relay.smarthost: only used when relay.mode is" in _err({"relay": {"smarthost": "a:25"}})
    assert "relay.tls: \"implicit\" needs relay.mode" in _err({"relay": {"tls": "implicit"}})
    assert "relay.smarthost: port must be" in _err({"relay": {"mode": "smarthost", "smarthost": "a:0"}})


def test_relay_auth():
    base = {"mode": "smarthost", "smarthost": "smtp.example.org:587", "username": "u", "password_file": "/etc/pw"}
    r = from_dict({"relay": base}).relay
    assert r.username == "u" and r.password_file == "/etc/pw" and r.tls == "starttls"
    d = dict(base)
    d["tls"] = "opportunistic"
    assert 'relay.tls: must be "starttls" or "implicit" when relay.username is set' in _err({"relay": d})
    d = dict(base)
    del d["password_file"]
    assert "relay.password_file: required when relay.username is set" in _err({"relay": d})
    d = dict(base)
    del d["username"]
    assert "relay.username: required when relay.password_file is set" in _err({"relay": d})
    assert "relay.username: only used when relay.mode" in _err({"relay": {"username": "u", "password_file": "p"}})


def test_retry_order():
    msg = _err({"relay": {"retry_min": 600, "retry_max": 300}})
    assert msg == "t.json: relay.retry_max: must be >= relay.retry_min (600), got 300", msg
    r = from_dict({"relay": {"retry_min": 60, "retry_max": 60}}).relay
    assert r.retry_min == r.retry_max == 60


def test_server_tls_and_auth():
    s = from_dict({"server": {"tls_cert": "c.pem", "tls_key": "k.pem", "auth_users_file": "users"}}).server
    assert (s.tls_cert, s.tls_key, s.auth_users_file) == ("c.pem", "k.pem", "users")
    assert "server.tls_key: server.tls_cert and server.tls_key must be set together" in \
        _err({"server": {"tls_cert": "c.pem"}})
    assert "server.tls_cert:" in _err({"server": {"tls_key": "k.pem"}})
    assert "server.auth_users_file: AUTH is only offered over TLS" in _err({"server": {"auth_users_file": "u"}})
    s = from_dict({"server": {"auth_users_file": "u", "auth_without_tls": True}}).server
    assert s.auth_without_tls is True


def test_spool_geometry():
    sp = from_dict({"spool": {"size": "256K", "sector_size": 4096, "prog_unit": 256},
                    "server": {"max_message_size": "150K"}}).spool
    assert (sp.size, sp.sector_size, sp.prog_unit) == (262144, 4096, 256)
    assert "spool.prog_unit: must be a power of two of at most 65536, got 3000" in _err({"spool": {"prog_unit": 3000}})
    assert "at most 65536, got 131072" in _err({"spool": {"prog_unit": 131072, "sector_size": 262144}})
    assert "spool.sector_size: must be a power of two and a multiple of spool.prog_unit (4096), got 6000" \
        in _err({"spool": {"sector_size": 6000}})
    assert "spool.size: must be a multiple of spool.sector_size (65536)" in _err({"spool": {"size": 4194305}})
    assert "at least 4 sectors" in _err({"spool": {"size": 196608}})
    msg = _err({"server": {"max_message_size": "4M"}})
    assert msg.startswith("t.json: server.max_message_size: must fit in the spool: at most %d "
                          % spool_admission_limit(4 << 20, 65536)) and msg.endswith("got 4194304"), msg


def test_largest_allowed_message_really_fits_an_empty_spool():
    from tinymta.flashsim import FlashSim
    from tinymta.spool import Spool
    for size, sector, unit in ((256 << 10, 4096, 256), (64 << 10, 4096, 16), (1 << 20, 65536, 4096)):
        limit = spool_admission_limit(size, sector)
        sp = Spool(FlashSim(size // sector, sector, unit))
        assert sp.can_accept(limit)
        w = sp.writer("s@x", ["r@x"], limit)
        w.write(b"x" * limit)
        mid = w.commit()
        assert sum(len(c) for c in sp.read(mid)) == limit


def test_to_json_dict_roundtrip():
    d = {"server": {"listen": ["[::]:25", "0.0.0.0:2525"], "relay_networks": ["10.0.0.0/8", "fd00::/8"],
                    "max_message_size": "2M", "relay_domains": ["Example.org"]},
         "relay": {"mode": "smarthost", "smarthost": "smtp.example.org", "dns_servers": ["127.0.0.1:5353"],
                   "username": "u", "password_file": "pw"},
         "console": {"password": "secret", "serial": "/dev/ttyS0"}}
    cfg = from_dict(d)
    j = to_json_dict(cfg)
    assert j["server"]["listen"] == ["[::]:25", "0.0.0.0:2525"]
    assert j["server"]["max_message_size"] == 2097152 and j["server"]["relay_domains"] == ["example.org"]
    assert j["relay"]["smarthost"] == "smtp.example.org:587" and j["relay"]["tls"] == "starttls"
    assert j["relay"]["ca_file"] == "" and j["console"]["password"] == "secret"
    n = 0
    for section in j:
        n += len(j[section])
    assert n == len(config.KEYS) == len(config.SCHEMA)
    again = from_dict(json.loads(json.dumps(j)), "again")
    assert again == cfg and to_json_dict(again) == j
    assert not (again != cfg) and load() != cfg
    assert to_json_dict(cfg, True)["console"]["password"] == "***"
    assert to_json_dict(load(), True)["console"]["password"] == ""


def test_json_file():
    d = _tmpdir()
    try:
        path = _write(d, "tinymta.json", json.dumps({"server": {"max_connections": 3, "listen": ["[::1]:2526"]},
                                                     "log": {"level": "debug"}}))
        cfg = load(path)
        assert cfg.server.max_connections == 3 and cfg.server.listen == [("::1", 2526)]
        assert cfg.log.level == "debug" and cfg.source == path
        bom = _write(d, "bom.json", b"\xef\xbb\xbf{}")
        assert load(bom) == load()
        for name, text, want in (
                ("bad.json", '{"server": {"max_connections": "eight"}}',
                 'bad.json: server.max_connections: must be an integer >= 1, got "eight"'),
                ("syntax.json", '{"server": {"max_connections": 3}\n\n', "syntax.json: bad JSON"),
                ("list.json", "[1, 2]", "list.json: must hold a table of sections"),
                ("utf.json", b"{\"spool\": {\"path\": \"\xff\"}}", "utf.json: not valid UTF-8")):
            path = _write(d, name, text)
            try:
                load(path)
            except ConfigError as e:
                msg = str(e)
                assert msg.startswith(d + "/" + want) and "\n" not in msg, msg
                continue
            raise AssertionError("loaded " + name)
    finally:
        _cleanup(d)


def test_file_errors():
    for path, want in (("/nonexistent/tinymta.json", "/nonexistent/tinymta.json: cannot read: no such file"),
                       ("/tmp", "/tmp: unknown config format: the name must end in .toml or .json"),
                       ("tinymta.ini", "tinymta.ini: unknown config format")):
        try:
            load(path)
        except ConfigError as e:
            assert str(e).startswith(want), str(e)
            continue
        raise AssertionError("loaded " + path)


def test_toml_file_per_runtime():
    d = _tmpdir()
    try:
        path = _write(d, "tinymta.toml", '[server]\nmax_connections = 4\n')
        if MICROPYTHON:
            try:
                load(path)
            except ConfigError as e:
                msg = str(e)
                assert msg.startswith(path + ": MicroPython cannot read TOML") and "tinymta build-config" in msg
                return
            raise AssertionError("MicroPython loaded TOML")
        if config._toml_module() is not None:
            assert load(path).server.max_connections == 4
    finally:
        _cleanup(d)
