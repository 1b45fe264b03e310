"""Board profiles (board/*.toml, tinymta/boards.py).

Every shipped profile loads, passes every check and gives a config that tinymta.config accepts,
with the board's facts where the firmware looks for them (spool geometry, console, LED,
watchdog).  Broken profiles written to tmp_path get one-line errors naming the file and the key
(unknown keys and tables with a did-you-mean, wrong types, a wrong runtime, missing keys, keys of
the other runtime, spool geometry, heap, [defaults] that tinymta.config refuses).  config_dict()
lays a user's config over the profile key by key and blames the right file for a bad value.
"""
import os

import pytest

from tinymta import boards, config
from tinymta.boards import ProfileError

EXPECTED = ["esp32", "esp32-s3", "pico-w", "pico2-w", "rpi-3", "rpi-4", "rpi-5", "rpi-zero-2w"]

LINUX = """\
[board]
name = "tb"
description = "a test board"
runtime = "linux"
mcu = "bcm2710a1"
ram = "512M"
heap = "64M"

[console]
port = "/dev/ttyGS0"
baud = 115200

[spool]
path = "/var/lib/tinymta/tinymta.spool"
size = "4M"
sector_size = 65536
prog_unit = 4096

[led]
pin = ""

[watchdog]
timeout_ms = 0

[defaults]
server.max_message_size = "1M"
server.max_connections = 8
"""

MICRO = """\
[board]
name = "tb"
description = "a test board"
runtime = "micropython"
mcu = "rp2040"
micropython_board = "RPI_PICO_W"
ram = 270336
flash = "2M"
heap = 194560

[console]
port = "usb"
baud = 115200

[spool]
partition = "flash"
offset = 344064
size = "512K"
sector_size = 4096
prog_unit = 256

[led]
pin = "LED"

[watchdog]
timeout_ms = 8000

[defaults]
server.max_message_size = "128K"
"""


@pytest.mark.parametrize("name", EXPECTED)
def test_every_profile_loads_and_gives_a_valid_config(name):
    p = boards.load_profile(name)
    b, s = p["board"], p["spool"]
    assert b["name"] == name and b["runtime"] in boards.RUNTIMES
    assert 0 < b["heap"] <= b["ram"]
    d = boards.config_dict(p)
    cfg = config.from_dict(d, name)
    assert cfg.board.name == name
    assert (cfg.spool.size, cfg.spool.sector_size, cfg.spool.prog_unit) == (s["size"], s["sector_size"], s["prog_unit"])
    assert cfg.console.serial == p["console"]["port"] and cfg.console.baud == p["console"]["baud"]
    assert cfg.board.led == (p["led"]["pin"] or None)
    assert cfg.board.watchdog_ms == p["watchdog"]["timeout_ms"]
    assert cfg.server.max_message_size <= config.spool_admission_limit(cfg.spool.size, cfg.spool.sector_size)
    assert "hostname" not in d.get("server", {})  # the board names itself at run time
    # the JSON a board gets reads back equal
    assert config.from_dict(config.to_json_dict(cfg)) == cfg
    if b["runtime"] == "linux":
        assert cfg.spool.path == s["path"] and cfg.console.serial.startswith("/dev/")
        assert cfg.spool.sector_size == 65536 and cfg.spool.prog_unit == 4096
    else:
        assert s["sector_size"] == 4096 and s["offset"] + s["size"] <= b["flash"]
        assert cfg.console.socket is None
        assert cfg.console.serial == "usb" or cfg.console.serial.startswith("uart")
        label = s["partition"] + ("@%d" % s["offset"] if s["offset"] else "")
        assert cfg.spool.path == label


def test_the_shipped_set_and_hardware_facts():
    assert boards.list_boards() == EXPECTED
    assert os.path.isfile(os.path.join(boards.BOARD_DIR, "README.md"))
    pico, pico2, esp, s3 = (boards.load_profile(n) for n in ("pico-w", "pico2-w", "esp32", "esp32-s3"))
    assert pico["led"]["pin"] == "LED" and pico["board"]["flash"] == 2 << 20
    assert pico["spool"]["prog_unit"] == pico2["spool"]["prog_unit"] == 256       # rp2 flash page
    assert esp["spool"]["prog_unit"] == s3["spool"]["prog_unit"] == 4             # ESP-IDF word writes
    assert pico["watchdog"]["timeout_ms"] <= 8388                                  # RP2040 WDT limit
    assert pico["board"]["heap"] < pico2["board"]["heap"] and esp["board"]["heap"] < pico["board"]["heap"]
    # rp2: the spool ends where MicroPython's storage area ends (848 KiB on the Pico W)
    assert pico["spool"]["offset"] + pico["spool"]["size"] == 848 * 1024
    zero = boards.load_profile("rpi-zero-2w")
    assert zero["console"]["port"] == "/dev/ttyGS0" and zero["board"]["ram"] == 512 << 20


def _write(tmp_path, text, name="tb"):
    p = tmp_path / (name + ".toml")
    p.write_text(text)
    return str(p)


def _error(tmp_path, text, name="tb"):
    path = _write(tmp_path, text, name)
    with pytest.raises(ProfileError) as e:
        boards.load_profile(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(boards._display(path) + ": "), msg
    return msg[len(boards._display(path)) + 2:]


def test_good_test_profiles_load(tmp_path):
    for text in (LINUX, MICRO):
        p = boards.load_profile(_write(tmp_path, text))
        assert p["spool"]["size"] in (4 << 20, 512 << 10)
    assert boards.load_profile(_write(tmp_path, MICRO))["spool"]["path"] is None


@pytest.mark.parametrize("base, old, new, expect", [
    (LINUX, 'size = "4M"', 'sise = "4M"', "spool.sise: unknown key (did you mean spool.size?)"),
    (LINUX, "[console]", "[consol]", "consol: unknown table (did you mean console?)"),
    (LINUX, "baud = 115200", 'baud = "fast"', 'console.baud: must be an integer >= 1, got "fast"'),
    (LINUX, "baud = 115200", "baud = true", "console.baud: must be an integer >= 1, got true"),
    (LINUX, 'size = "4M"', 'size = "4MB"', 'spool.size: must be a size >= 1 bytes'),
    (LINUX, 'runtime = "linux"', 'runtime = "zephyr"', 'board.runtime: must be one of "linux", "micropython"'),
    (LINUX, 'heap = "64M"\n', "", "board.heap: missing"),
    (LINUX, "[led]", 'partition = "x"\n[led]', "spool.partition: only used by micropython boards"),
    (MICRO, 'micropython_board = "RPI_PICO_W"\n', "", "board.micropython_board: missing (needed by micropython boards)"),
    (LINUX, 'size = "4M"', "size = 4200000", "spool.size: must be a multiple of spool.sector_size (65536)"),
    (LINUX, 'size = "4M"', "size = 131072", "spool.size: must be a multiple of spool.sector_size (65536) and at least 4 sectors"),
    (LINUX, "prog_unit = 4096", "prog_unit = 3000", "spool.prog_unit: must be a power of two, got 3000"),
    (LINUX, "prog_unit = 4096", "prog_unit = 131072", "spool.sector_size: must be a power of two and a multiple of spool.prog_unit"),
    (MICRO, "offset = 344064", "offset = 344000", "spool.offset: must be a multiple of spool.sector_size (4096)"),
    (MICRO, 'size = "512K"', 'size = "1792K"', "spool.size: spool.offset + spool.size (2179072) must fit in board.flash (2097152)"),
    (LINUX, 'heap = "64M"', 'heap = "1G"', "board.heap: must not exceed board.ram"),
    (LINUX, 'heap = "64M"', "heap = 0", "board.heap: must be a size >= 1 bytes"),
    (LINUX, 'name = "tb"', 'name = "other"', 'board.name: must match the file name "tb", got "other"'),
    (LINUX, 'port = "/dev/ttyGS0"', 'port = "ttyS0"', 'console.port: must be a device path'),
    (MICRO, 'port = "usb"', 'port = "COM3"', 'console.port: must be "usb" (USB-CDC stdin/stdout) or "uartN"'),
    (LINUX, 'path = "/var/lib/tinymta/tinymta.spool"', 'path = "tinymta.spool"', "spool.path: must be an absolute path"),
    (LINUX, "timeout_ms = 0", "timeout_ms = -1", "watchdog.timeout_ms: must be an integer >= 0"),
    (LINUX, "server.max_connections = 8", "server.max_conections = 8",
     "server.max_conections: unknown key (did you mean server.max_connections?)"),
    (LINUX, "server.max_connections = 8", 'spool.size = "8M"', "defaults.spool.size: set from the profile's own tables"),
    (LINUX, 'server.max_message_size = "1M"', 'server.max_message_size = "4M"',
     "server.max_message_size: must fit in the spool"),
    (LINUX, "[watchdog]", "[watchdog\n", "Expected ']'"),
], ids=lambda v: v.split(":")[0][:40] if isinstance(v, str) and "\n" not in v and "=" not in v else "")
def test_bad_profiles_give_one_line_errors(tmp_path, base, old, new, expect):
    assert old in base
    msg = _error(tmp_path, base.replace(old, new, 1))
    assert expect in msg, msg


def test_unknown_board_names_and_explicit_directory(tmp_path):
    with pytest.raises(ProfileError) as e:
        boards.load_profile("rpi-zero2w")
    assert 'unknown board "rpi-zero2w" (did you mean rpi-zero-2w?)' in str(e.value)
    assert "known boards: esp32, esp32-s3" in str(e.value)
    _write(tmp_path, LINUX)
    assert boards.list_boards(str(tmp_path)) == ["tb"]
    assert boards.load_profile("tb", str(tmp_path))["board"]["mcu"] == "bcm2710a1"
    with pytest.raises(ProfileError):
        boards.load_profile("pico-w", str(tmp_path))
    with pytest.raises(ProfileError) as e:
        boards.load_profile(str(tmp_path / "nope.toml"))
    assert "no such board profile" in str(e.value)


def test_config_dict_lays_the_user_config_over_the_profile(tmp_path):
    p = boards.load_profile("rpi-zero-2w")
    user = {"server": {"max_connections": 3, "hostname": "alerts.lan"},
            "spool": {"path": "/srv/mail/tinymta.spool"},
            "relay": {"mode": "smarthost", "smarthost": "smtp.example.com:587"},
            "board": {"name": ""}}
    d = boards.config_dict(p, user, "user.toml")
    assert d["server"]["max_connections"] == 3 and d["server"]["hostname"] == "alerts.lan"
    assert d["server"]["max_message_size"] == "10M"          # the profile's default kept
    assert d["server"]["listen"] == ["0.0.0.0:25"]
    assert d["spool"]["path"] == "/srv/mail/tinymta.spool"   # the user wins
    assert d["spool"]["size"] == 64 << 20                    # the rest of the geometry stays
    assert d["relay"] == {"max_deliveries": 4, "mode": "smarthost", "smarthost": "smtp.example.com:587"}
    assert d["board"]["name"] == "rpi-zero-2w"
    assert d["console"]["serial"] == "/dev/ttyGS0"
    assert p["defaults"]["server"]["max_connections"] == 8   # the profile is not modified
    cfg = config.from_dict(d)
    assert cfg.relay.smarthost == ("smtp.example.com", 587)

    with pytest.raises(config.ConfigError) as e:             # the user's bad value names the user's file
        boards.config_dict(p, {"server": {"max_connections": "eight"}}, "user.toml")
    assert str(e.value).startswith('user.toml: server.max_connections: must be an integer >= 1, got "eight"')
    with pytest.raises(config.ConfigError) as e:             # too big for the profile's spool
        boards.config_dict(p, {"spool": {"size": "1M"}}, "user.toml")
    assert str(e.value).startswith("user.toml: server.max_message_size: must fit in the spool")
    with pytest.raises(config.ConfigError) as e:
        boards.config_dict(p, {"board": {"name": "pico-w"}}, "user.toml")
    assert 'the config is for board "pico-w" but the profile is "rpi-zero-2w"' in str(e.value)
    with pytest.raises(config.ConfigError) as e:
        boards.config_dict(p, {"sever": {}}, "user.toml")
    assert "user.toml: sever: unknown section (did you mean server?)" in str(e.value)
