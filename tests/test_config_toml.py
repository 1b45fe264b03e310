"""tinymta.config with TOML files (CPython only): parsing, syntax errors, every validation message.

Each error must be one line that starts with the file name and names the key.
"""
import json

import pytest

from tinymta.config import spool_admission_limit

LIMIT_4M = spool_admission_limit(4 << 20, 65536)

from tinymta import config
from tinymta.config import ConfigError, load, to_json_dict

if config._toml_module() is None:  # Python 3.9/3.10 without tomli: no TOML on this interpreter
    pytest.skip("no tomllib or tomli", allow_module_level=True)

FULL_TOML = """\
# every key, none at its default
[server]
listen = ["0.0.0.0:25", "[::]:25"]
hostname = "mta.example.org"
max_message_size = "2M"
max_recipients = 50
max_connections = 4
relay_networks = ["192.168.1.0/24", "fd00::/8", "127.0.0.1"]
relay_domains = ["example.org"]
bare_newlines = "normalize"
timeout = "2m"
tls_cert = "/etc/tinymta/cert.pem"
tls_key = "/etc/tinymta/key.pem"
auth_users_file = "/etc/tinymta/users"
auth_without_tls = false
postmaster = "admin@example.org"

[spool]
path = "/var/spool/tinymta.spool"
size = "8MiB"
sector_size = "128K"
prog_unit = 4096

[relay]
mode = "smarthost"
smarthost = "smtp.example.org:465"
tls = "implicit"
username = "alerts@example.org"
password_file = "/etc/tinymta/password"
ca_file = "/etc/ssl/certs/ca-certificates.crt"
dns_servers = ["127.0.0.1:5353"]
mx_port = 2525
retry_min = 60
retry_max = "1h"
max_age = "2d"
timeout = "2m"
data_timeout = 900
max_deliveries = 2

[console]
serial = "/dev/ttyS0"
baud = 9600
socket = "/run/tinymta.sock"
password = "console-secret"

[log]
level = "debug"

[board]
name = "pico-w"
led = "LED"
watchdog_ms = 8000
wifi_ssid = "sensors"
wifi_password = "wifi-secret"
"""

FULL_JSON = {
    "server": {"listen": ["0.0.0.0:25", "[::]:25"], "hostname": "mta.example.org", "max_message_size": 2097152,
               "max_recipients": 50, "max_connections": 4,
               "relay_networks": ["192.168.1.0/24", "fd00::/8", "127.0.0.1"], "relay_domains": ["example.org"],
               "bare_newlines": "normalize", "timeout": 120, "tls_cert": "/etc/tinymta/cert.pem",
               "tls_key": "/etc/tinymta/key.pem", "auth_users_file": "/etc/tinymta/users",
               "auth_without_tls": False, "postmaster": "admin@example.org"},
    "spool": {"path": "/var/spool/tinymta.spool", "size": 8388608, "sector_size": 131072, "prog_unit": 4096},
    "relay": {"mode": "smarthost", "smarthost": "smtp.example.org:465", "tls": "implicit",
              "username": "alerts@example.org", "password_file": "/etc/tinymta/password",
              "ca_file": "/etc/ssl/certs/ca-certificates.crt", "dns_servers": ["127.0.0.1:5353"], "mx_port": 2525,
              "retry_min": 60, "retry_max": 3600, "max_age": 172800, "timeout": 120, "data_timeout": 900, "max_deliveries": 2},
    "console": {"serial": "/dev/ttyS0", "baud": 9600, "socket": "/run/tinymta.sock", "password": "console-secret"},
    "log": {"level": "debug"},
    "board": {"name": "pico-w", "led": "LED", "watchdog_ms": 8000, "wifi_ssid": "sensors",
              "wifi_password": "wifi-secret"},
}


def write(tmp_path, text, name="tinymta.toml"):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return str(p)


def load_error(path):
    with pytest.raises(ConfigError) as info:
        load(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(path + ": "), msg
    return msg[len(path) + 2:]


def test_defaults_without_file():
    cfg = load()
    assert cfg == load(None) == config.from_dict({})
    assert cfg.server.listen == [("127.0.0.1", 2525)] and cfg.relay.tls == "opportunistic"
    assert cfg.spool.size == 4 << 20 and cfg.server.max_message_size == 1 << 20


def test_full_toml(tmp_path):
    cfg = load(write(tmp_path, FULL_TOML))
    s, r = cfg.server, cfg.relay
    assert s.listen == [("0.0.0.0", 25), ("::", 25)] and s.hostname == "mta.example.org"
    assert s.max_message_size == 2 << 20 and s.timeout == 120 and s.bare_newlines == "normalize"
    assert config.ip_allowed(cfg, "192.168.1.99") and config.ip_allowed(cfg, "fd12::1")
    assert config.ip_allowed(cfg, "127.0.0.1") and not config.ip_allowed(cfg, "127.0.0.2")
    assert cfg.spool.size == 8 << 20 and cfg.spool.sector_size == 128 << 10
    assert r.smarthost == ("smtp.example.org", 465) and r.tls == "implicit" and r.dns_servers == [("127.0.0.1", 5353)]
    assert (r.retry_min, r.retry_max, r.max_age) == (60, 3600, 172800)
    assert cfg.console.baud == 9600 and cfg.log.level == "debug"


def test_toml_and_json_equal(tmp_path):
    from_toml = load(write(tmp_path, FULL_TOML))
    from_json = load(write(tmp_path, json.dumps(FULL_JSON), "tinymta.json"))
    assert from_toml == from_json
    assert to_json_dict(from_toml) == FULL_JSON
    # what `tinymta build-config` writes reads back equal, also for a partial file
    small = load(write(tmp_path, '[relay]\nmode = "smarthost"\nsmarthost = "relay.lan"\n', "small.toml"))
    compiled = write(tmp_path, json.dumps(to_json_dict(small)), "small.json")
    assert load(compiled) == small and load(compiled).relay.smarthost == ("relay.lan", 587)


@pytest.mark.parametrize("text, words", [
    ("[server\n", ["Expected ']'", "line 1"]),
    ("[server]\nmax_connections 8\n", ["Expected '='", "line 2"]),
    ("[server]\nlisten = [\"a:1\",\n", []),
    ("[server]\nmax_connections = 8\nmax_connections = 9\n", ["line 3"]),
    ("[log]\nlevel = 'info\n", ["Expected"]),
])
def test_syntax_errors(tmp_path, text, words):
    msg = load_error(write(tmp_path, text))  # the parser's own message, on one line after the file name
    assert msg and [w for w in words if w in msg] == words, msg


MESSAGES = [
    ("[sever]", "sever: unknown section (did you mean server?)"),
    ("top = 1", "top: unknown section"),
    ("server = 1", "server: must be a table of keys, got 1"),
    ("[server]\nlistn = []", "server.listn: unknown key (did you mean server.listen?)"),
    ("[spool]\nsmarthost = 'x'", "spool.smarthost: unknown key (did you mean relay.smarthost?)"),
    ("[server]\nlisten = '127.0.0.1:25'", 'server.listen: must be a list of strings (at least one), got "127.0.0.1:25"'),
    ("[server]\nlisten = []", "server.listen: must be a list of strings (at least one), got a list"),
    ("[server]\nlisten = [25]", "server.listen: entries must be strings, got 25"),
    ("[server]\nlisten = ['127.0.0.1']\nhostname = 'a b'",
     "server.hostname: must be a host name (letters, digits, '-', '.') or an [address], got \"a b\""),
    ("[server]\nlisten = ['::1:25']", 'server.listen: IPv6 addresses need brackets, as "[::1]:25", got "::1:25"'),
    ("[server]\nlisten = ['localhost:99999']", 'server.listen: port must be a number 1-65535, got "localhost:99999"'),
    ("[server]\nmax_message_size = '1MB'",
     'server.max_message_size: must be a size >= 1 bytes: an integer or "64K", "4M", "1MiB"..., got "1MB"'),
    ("[server]\nmax_recipients = 0", "server.max_recipients: must be an integer >= 1, got 0"),
    ("[server]\nmax_connections = 'eight'", 'server.max_connections: must be an integer >= 1, got "eight"'),
    ("[server]\nmax_connections = true", "server.max_connections: must be an integer >= 1, got true"),
    ("[server]\nmax_connections = 2.5", "server.max_connections: must be an integer >= 1, got 2.5"),
    ("[server]\nrelay_networks = ['10.0.0.1/8']",
     'server.relay_networks: host bits set (did you mean "10.0.0.0/8"?), got "10.0.0.1/8"'),
    ("[server]\nrelay_networks = ['::1/129']", 'server.relay_networks: prefix length must be 0-128, got "::1/129"'),
    ("[server]\nrelay_networks = ['lan']", 'server.relay_networks: not an IPv4 or IPv6 network, got "lan"'),
    ("[server]\nrelay_domains = ['a..b']", 'server.relay_domains: bad domain, got "a..b"'),
    ("[server]\nbare_newlines = 'fix'",
     'server.bare_newlines: must be one of "reject", "normalize", got "fix"'),
    ("[server]\ntimeout = '1w'",
     'server.timeout: must be a duration >= 1 s: integer seconds or "30s", "5m", "1h", "5d", got "1w"'),
    ("[server]\ntls_cert = 1", 'server.tls_cert: must be a string ("" for none), got 1'),
    ("[server]\ntls_cert = 'c'", "server.tls_key: server.tls_cert and server.tls_key must be set together"),
    ("[server]\ntls_key = 'k'", "server.tls_cert: server.tls_cert and server.tls_key must be set together"),
    ("[server]\nauth_users_file = 'u'", "server.auth_users_file: AUTH is only offered over TLS: set server.tls_cert"
     " and server.tls_key, or server.auth_without_tls = true"),
    ("[server]\nauth_without_tls = 'no'", 'server.auth_without_tls: must be true or false, got "no"'),
    ("[server]\nmax_message_size = '4M'", "server.max_message_size: must fit in the spool: at most %d for this"
     " spool.size (the spool admits mail up to 75%% of its space less a 2-sector reserve), got 4194304" % LIMIT_4M),
    ("[spool]\npath = ''", 'spool.path: must be a non-empty string, got ""'),
    ("[spool]\npath = 1979-05-27", "spool.path: must be a non-empty string, got a date"),
    ("[spool]\nsize = 0", 'spool.size: must be a size >= 1 bytes: an integer or "64K", "4M", "1MiB"..., got 0'),
    ("[spool]\nsize = '5000K'", "spool.size: must be a multiple of spool.sector_size (65536) and at least 4 sectors,"
     " got 5120000"),
    ("[spool]\nsector_size = '6000'", "spool.sector_size: must be a power of two and a multiple of spool.prog_unit (4096), got 6000"),
    ("[spool]\nprog_unit = 100", "spool.prog_unit: must be a power of two of at most 65536, got 100"),
    ("[relay]\nmode = 'direct'", 'relay.mode: must be one of "mx", "smarthost", "none", got "direct"'),
    ("[relay]\nmode = 'smarthost'", 'relay.smarthost: required when relay.mode is "smarthost"'),
    ("[relay]\nsmarthost = 'relay.lan:587'", 'relay.smarthost: only used when relay.mode is "smarthost" (it is "mx")'),
    ("[relay]\nmode = 'smarthost'\nsmarthost = 'a:b'", 'relay.smarthost: port must be a number 1-65535, got "a:b"'),
    ("[relay]\ntls = 'always'",
     'relay.tls: must be one of "none", "opportunistic", "starttls", "implicit", got "always"'),
    ("[relay]\ntls = 'implicit'", 'relay.tls: "implicit" needs relay.mode "smarthost": MX hosts take STARTTLS on'
     ' port 25 ("starttls" makes it mandatory)'),
    ("[relay]\nmode = 'smarthost'\nsmarthost = 'a'\nusername = 'u'",
     "relay.password_file: required when relay.username is set"),
    ("[relay]\nmode = 'smarthost'\nsmarthost = 'a'\npassword_file = 'p'",
     "relay.username: required when relay.password_file is set"),
    ("[relay]\nusername = 'u'\npassword_file = 'p'", 'relay.username: only used when relay.mode is "smarthost"'
     ' (it is "mx")'),
    ("[relay]\nmode = 'smarthost'\nsmarthost = 'a'\nusername = 'u'\npassword_file = 'p'\ntls = 'opportunistic'",
     'relay.tls: must be "starttls" or "implicit" when relay.username is set (no password in clear),'
     ' got "opportunistic"'),
    ("[relay]\ndns_servers = ['dns.lan']", 'relay.dns_servers: DNS servers must be IP addresses, got "dns.lan"'),
    ("[relay]\ndns_servers = '127.0.0.1'", 'relay.dns_servers: must be a list of strings, got "127.0.0.1"'),
    ("[relay]\nmx_port = 0", "relay.mx_port: must be a port number 1-65535, got 0"),
    ("[relay]\nmx_port = 70000", "relay.mx_port: must be a port number 1-65535, got 70000"),
    ("[relay]\nretry_min = 0", 'relay.retry_min: must be a duration >= 1 s: integer seconds or "30s", "5m", "1h",'
     ' "5d", got 0'),
    ("[relay]\nretry_min = '2h'", "relay.retry_max: must be >= relay.retry_min (7200), got 3600"),
    ("[relay]\nmax_deliveries = 0", "relay.max_deliveries: must be an integer >= 1, got 0"),
    ("[relay]\ntimeout = 0", 'relay.timeout: must be a duration >= 1 s: integer seconds or "30s", "5m", "1h",'
     ' "5d", got 0'),
    ("[relay]\ndata_timeout = 'x'", 'relay.data_timeout: must be a duration >= 1 s: integer seconds or "30s", "5m",'
     ' "1h", "5d", got "x"'),
    ("[relay]\nmax_age = -1", 'relay.max_age: must be a duration >= 1 s: integer seconds or "30s", "5m", "1h",'
     ' "5d", got -1'),
    ("[relay]\nca_file = ['a']", 'relay.ca_file: must be a string ("" for none), got a list'),
    ("[console]\nserial = false", 'console.serial: must be a string ("" for none), got false'),
    ("[console]\nbaud = '115200'", 'console.baud: must be an integer >= 1, got "115200"'),
    ("[console]\nsocket = []", 'console.socket: must be a string ("" for none), got a list'),
    ("[server]\npostmaster = 'admin'", 'server.postmaster: must be a mail address like "admin@example.org", got "admin"'),
    ("[server]\nhostname = 'pi.lan'\npostmaster = 'PostMaster@pi.lan'",
     "server.postmaster: must be another address (mail for it would come back here)"),
    ("[board]\nname = 3", 'board.name: must be a string ("" for none), got 3'),
    ("[board]\nled = 25", 'board.led: must be a string ("" for none), got 25'),
    ("[board]\nwatchdog_ms = -1", 'board.watchdog_ms: must be an integer >= 0, got -1'),
    ("[board]\nwifi_ssid = true", 'board.wifi_ssid: must be a string ("" for none), got true'),
    ("[board]\nwifi_password = {}", 'board.wifi_password: must be a string ("" for none), got a table'),
    ("[console]\npassword = 1234", 'console.password: must be a string ("" for none), got 1234'),
    ("[log]\nlevel = 'verbose'", 'log.level: must be one of "debug", "info", "warning", "error", got "verbose"'),
    ("[log]\nlevel = { a = 1 }", 'log.level: must be one of "debug", "info", "warning", "error", got a table'),
]


@pytest.mark.parametrize("toml, message", MESSAGES)
def test_validation_messages(tmp_path, toml, message):
    assert load_error(write(tmp_path, toml + "\n")) == message


def test_every_key_has_a_message():
    """Each key of the schema appears in at least one validation test above."""
    tested = " ".join(m for _, m in MESSAGES)
    missing = [k for k in config.KEYS if k + ":" not in tested]
    assert missing == [], missing


def test_file_errors(tmp_path):
    assert load_error(str(tmp_path / "missing.toml")) == "cannot read: no such file"
    assert load_error(write(tmp_path, "x", "tinymta.yaml")).startswith("unknown config format")
    assert load_error(write(tmp_path, b"[log]\nlevel = '\xff'\n")) == "not valid UTF-8"
    assert load_error(write(tmp_path, "{", "x.json")).startswith("bad JSON: Expecting property name")
    d = tmp_path / "dir.toml"
    d.mkdir()
    assert load_error(str(d)) == "cannot read: is a directory"


def test_bom_and_case(tmp_path):
    cfg = load(write(tmp_path, "\ufeff[log]\nlevel = 'error'\n", "CONFIG.TOML"))
    assert cfg.log.level == "error"


def test_no_toml_parser(tmp_path, monkeypatch):
    path = write(tmp_path, "[log]\nlevel = 'info'\n")
    monkeypatch.setattr(config, "_toml_module", lambda: None)
    assert "needs Python 3.11+ or the tomli package" in load_error(path)
    monkeypatch.setattr(config, "MICROPYTHON", True)
    msg = load_error(path)
    assert msg.startswith("MicroPython cannot read TOML") and "`tinymta build-config`" in msg
    assert load(write(tmp_path, "{}", "x.json")) == load()  # JSON still works


def test_redacted_dump(tmp_path):
    cfg = load(write(tmp_path, FULL_TOML))
    assert to_json_dict(cfg, True)["console"]["password"] == "***"
    assert to_json_dict(cfg)["console"]["password"] == "console-secret"
