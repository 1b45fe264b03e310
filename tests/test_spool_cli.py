"""The offline spool tools (`python -m tinymta spool check|dump|cat`) against real spool files.

A real FileBlockDevice spool is written in-process, then the command line is run
as a user would run it.  Checked: the reports and exit codes on a clean spool,
byte-exact `cat`, detection of a corrupted body (exit 1, DAMAGED, the message
never listed nor returned), and bad input of every kind a user can hand the
tools: one `tinymta: ...` line on stderr, exit status 2, no traceback.  The
library gives the same inputs clear exceptions and never reformats a file that
is not blank (the file's bytes are compared before and after).
"""
import binascii
import hashlib
import json
import os
import struct
import subprocess
import sys
import time

import pytest

from tinymta import spoolfmt as fmt
from tinymta import spooltool
from tinymta.blockdev import BlockDeviceError, FileBlockDevice
from tinymta.spool import Spool
from tinymta.spoolfmt import FormatError, SpoolError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECTOR = 16384
UNIT = 4096
NSECTORS = 16
SIZE = NSECTORS * SECTOR


def _pattern(n, seed):
    out = bytearray()
    i = 0
    while len(out) < n:
        out.extend(hashlib.sha256(b"%d:%d" % (seed, i)).digest())
        i += 1
    return bytes(out[:n])


# Markers are unique in the file: found by searching the raw bytes.
BODY_ONE = b"Subject: one\r\n\r\nMARKER-ONE-7f3a small body\r\n.\r\n..dots\r\n"
BODY_TWO = (b"Subject: two\r\n\r\n" + _pattern(9000, 2) + b"MARKER-TWO-c41e in a later fragment"
            + _pattern(3000, 3))
BODY_THREE = bytes(range(256)) * 8 + b"\r\n.\r\nMARKER-THREE-9d02\r\n"
BODY_GONE = b"Subject: gone\r\n\r\nMARKER-GONE-55aa delivered to everyone\r\n"


def _cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "tinymta"] + list(args), cwd=ROOT, env=env,
                          capture_output=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _put(sp, sender, rcpts, body, chunk=1000):
    w = sp.writer(sender, rcpts)
    for i in range(0, len(body), chunk):
        w.write(body[i:i + chunk])
    return w.commit()


@pytest.fixture
def spool(tmp_path):
    """A 16-sector spool file: three live messages (the first partly delivered), one fully delivered."""
    path = str(tmp_path / "mail.spool")
    dev = FileBlockDevice(path, size=SIZE, block_size=SECTOR, prog_unit=UNIT)
    sp = Spool(dev)
    ids = {
        "one": _put(sp, "alice@lan.example", ["bob@x.example", "carol@y.example"], BODY_ONE),
        "gone": _put(sp, "gone@lan.example", ["dave@x.example"], BODY_GONE),
        "two": _put(sp, "sensor@lan.example", ["ops@z.example"], BODY_TWO, chunk=777),
        "three": _put(sp, "", ["erin@x.example", "frank@x.example", "gina@x.example"], BODY_THREE),
    }
    sp.ack(ids["one"], ["bob@x.example"])
    sp.ack(ids["gone"], ["dave@x.example"])
    sp.flush()
    dev.close()
    with open(path, "rb") as f:
        data = f.read()
    for marker in (b"MARKER-ONE-", b"MARKER-TWO-", b"MARKER-THREE-"):
        assert data.count(marker) == 1, marker
    return {"path": path, "ids": ids, "tmp": tmp_path,
            "bodies": {"one": BODY_ONE, "two": BODY_TWO, "three": BODY_THREE}}


def _hex(msg_id):
    return fmt.format_id(msg_id)


# --- a clean spool ------------------------------------------------------------------

def test_check_clean_spool(spool):
    before = _sha(spool["path"])
    rc, out, err = _cli("spool", "check", spool["path"])
    text = out.decode()
    assert rc == 0, text + err
    assert err == ""
    assert "%d sectors of %d bytes (program unit %d)" % (NSECTORS, SECTOR, UNIT) in text
    assert "messages: 3 live" in text
    assert "result: ok" in text and "DAMAGED" not in text
    assert _sha(spool["path"]) == before, "check wrote to the spool file"


def test_dump_lists_messages_with_delivered_marks(spool):
    before = _sha(spool["path"])
    rc, out, err = _cli("spool", "dump", spool["path"])
    assert rc == 0 and err == "", err
    lines = out.decode().splitlines()
    assert lines[0].startswith("spool %s: 3 messages" % spool["path"]), lines[0]
    ids = spool["ids"]
    assert not any(_hex(ids["gone"]) in line for line in lines), "a delivered message is listed"
    assert "gone@lan.example" not in out.decode()

    def block(key):
        start = [i for i, line in enumerate(lines) if line.startswith(_hex(ids[key]) + " ")]
        assert len(start) == 1, (key, lines)
        i = start[0] + 1
        rcpts = []
        while i < len(lines) and lines[i].startswith(" "):
            rcpts.append(lines[i].strip())
            i += 1
        return lines[start[0]], rcpts

    head, rcpts = block("one")
    assert head.split()[1] == str(len(BODY_ONE)) and head.endswith("<alice@lan.example>")
    assert rcpts == ["<bob@x.example>  (delivered)", "<carol@y.example>"]
    head, rcpts = block("two")
    assert head.split()[1] == str(len(BODY_TWO)) and head.endswith("<sensor@lan.example>")
    assert rcpts == ["<ops@z.example>"]
    head, rcpts = block("three")
    assert head.split()[1] == str(len(BODY_THREE)) and head.endswith("<>")      # null sender
    assert rcpts == ["<erin@x.example>", "<frank@x.example>", "<gina@x.example>"]
    assert not any(line.startswith("damage:") for line in lines)
    assert _sha(spool["path"]) == before


def test_dump_json(spool):
    rc, out, err = _cli("spool", "dump", "--json", spool["path"])
    assert rc == 0 and err == "", err
    assert out.count(b"\n") == 1, "not one line of JSON"
    d = json.loads(out)
    for key in ("sectors", "sector_size", "prog_unit", "capacity", "used", "free", "messages", "head_seq",
                "tail_seq", "free_sectors", "erase_min", "erase_max", "erase_counts", "records",
                "interrupted_writes", "incomplete_discarded", "corrupt_messages", "damage", "queue"):
        assert key in d, key
    assert (d["sectors"], d["sector_size"], d["prog_unit"]) == (NSECTORS, SECTOR, UNIT)
    assert d["messages"] == 3 and len(d["queue"]) == 3
    assert d["corrupt_messages"] == 0 and d["damage"] == [] and d["interrupted_writes"] == 0
    assert 0 < d["used"] <= d["capacity"] and d["used"] + d["free"] == d["capacity"]
    assert len(d["erase_counts"]) == NSECTORS
    ids = spool["ids"]
    queue = {m["id"]: m for m in d["queue"]}
    assert set(queue) == {_hex(ids[k]) for k in ("one", "two", "three")}
    for m in d["queue"]:
        assert set(m) == {"id", "arrival_time", "size", "sender", "recipients"}
        assert abs(m["arrival_time"] - time.time()) < 3600
    one = queue[_hex(ids["one"])]
    assert one["sender"] == "alice@lan.example" and one["size"] == len(BODY_ONE)
    assert one["recipients"] == [{"address": "bob@x.example", "delivered": True},
                                 {"address": "carol@y.example", "delivered": False}]
    two = queue[_hex(ids["two"])]
    assert two["sender"] == "sensor@lan.example" and two["size"] == len(BODY_TWO)
    assert two["recipients"] == [{"address": "ops@z.example", "delivered": False}]
    three = queue[_hex(ids["three"])]
    assert three["sender"] == "" and three["size"] == len(BODY_THREE)
    assert [r["address"] for r in three["recipients"]] == ["erin@x.example", "frank@x.example", "gina@x.example"]
    assert not any(r["delivered"] for r in three["recipients"])


@pytest.mark.parametrize("key", ["one", "two", "three"])
def test_cat_outputs_exact_body(spool, key):
    before = _sha(spool["path"])
    rc, out, err = _cli("spool", "cat", spool["path"], _hex(spool["ids"][key]))
    assert rc == 0 and err == "", err
    assert out == spool["bodies"][key]
    rc, out, err = _cli("spool", "cat", spool["path"], _hex(spool["ids"][key]).lower())
    assert rc == 0 and out == spool["bodies"][key], err
    assert _sha(spool["path"]) == before


# --- a damaged body ---------------------------------------------------------------

@pytest.mark.parametrize("key,marker", [("one", b"MARKER-ONE-"), ("two", b"MARKER-TWO-")])
def test_corrupt_body_is_reported_and_never_returned(spool, key, marker):
    path, ids = spool["path"], spool["ids"]
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(marker) + len(marker) + 1
        f.seek(at)
        f.write(bytes([data[at] ^ 0x20]))
    damaged = _hex(ids[key])
    others = [k for k in ("one", "two", "three") if k != key]
    before = _sha(path)

    rc, out, err = _cli("spool", "check", path)
    text = out.decode()
    assert rc == 1, text + err
    assert "DAMAGED" in text and "result: ok" not in text
    assert any(line.startswith("damage:") and damaged in line for line in text.splitlines()), text
    assert "messages: 2 live" in text

    rc, out, err = _cli("spool", "dump", path)
    text = out.decode()
    assert rc == 0, err
    listed = [line.split()[0] for line in text.splitlines()[1:] if line[:1].isalnum() and not
              line.startswith("damage:")]
    assert listed == sorted(_hex(ids[k]) for k in others)
    assert any(line.startswith("damage:") and damaged in line for line in text.splitlines()), text

    rc, out, err = _cli("spool", "dump", "--json", path)
    d = json.loads(out)
    assert rc == 0 and d["corrupt_messages"] == 1 and d["messages"] == 2
    assert sorted(m["id"] for m in d["queue"]) == sorted(_hex(ids[k]) for k in others)

    rc, out, err = _cli("spool", "cat", path, damaged)
    assert rc == 2 and out == b"" and err.startswith("tinymta: ") and "Traceback" not in err, err
    for k in others:
        rc, out, err = _cli("spool", "cat", path, _hex(ids[k]))
        assert rc == 0 and out == spool["bodies"][k], err

    dev = FileBlockDevice(path, size=SIZE, block_size=SECTOR, prog_unit=UNIT)
    try:
        sp = Spool(dev)
        assert sorted(m.id for m in sp.messages()) == sorted(ids[k] for k in others)
        assert ids[key] not in sp and len(sp) == 2
        with pytest.raises(SpoolError):
            b"".join(sp.read(ids[key]))
        for k in others:
            assert b"".join(sp.read(ids[k])) == spool["bodies"][k]
    finally:
        dev.close()
    assert _sha(path) == before, "the tools or a mount wrote to the damaged spool"


# --- bad input -----------------------------------------------------------------------

def _set_version(path, version):
    """Rewrite the format version of every valid sector header, with a correct header CRC."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        n = 0
        for off in range(0, len(data), SECTOR):
            h = data[off:off + fmt.SECTOR_HDR]
            if h[:4] == fmt.MAGIC and binascii.crc32(bytes(h[:36])) == struct.unpack_from("<I", h, 36)[0]:
                data[off + 4] = version
                struct.pack_into("<I", data, off + 36, binascii.crc32(bytes(data[off:off + 36])))
                n += 1
        assert n >= 2
        f.seek(0)
        f.write(data)


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _overwrite(path, data):
    with open(path, "wb") as f:
        f.write(data)


# name -> (make the bad file from the good spool path; returns the path to use), words the message must hold
BAD_FILES = {
    "nonexistent": (lambda p: p + ".missing", "no such file"),
    "truncated_partial_sector": (lambda p: (_truncate(p, 5 * SECTOR + 1000), p)[1], "not a whole number"),
    "truncated_whole_sectors": (lambda p: (_truncate(p, 8 * SECTOR), p)[1], "truncated"),
    "random_bytes": (lambda p: (_overwrite(p, os.urandom(SIZE)), p)[1], "no tinymta spool here"),
    "all_zeros": (lambda p: (_overwrite(p, bytes(SIZE)), p)[1], "no tinymta spool here"),
    "empty": (lambda p: (_overwrite(p, b""), p)[1], "no tinymta spool here"),
    "newer_version": (lambda p: (_set_version(p, 2), p)[1], "newer"),
    "directory": (lambda p: os.path.dirname(p), "directory"),
}


def _assert_one_line_error(rc, out, err, words):
    assert "Traceback" not in err and b"Traceback" not in out, err
    assert rc == 2, (rc, err)
    assert out == b"", out
    assert err.startswith("tinymta: ") and err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert words.lower() in err.lower(), (words, err)


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("action", ["check", "dump", "dump --json", "cat"])
def test_bad_file_is_one_line_error(spool, case, action):
    make, words = BAD_FILES[case]
    path = make(spool["path"])
    before = _sha(path) if os.path.isfile(path) else None
    args = ["spool"] + action.split() + [path]
    if action == "cat":
        args.append(_hex(spool["ids"]["one"]))
    rc, out, err = _cli(*args)
    _assert_one_line_error(rc, out, err, words)
    if case == "newer_version":
        assert "version 2" in err
    if before is not None:
        assert _sha(path) == before, "the tool wrote to the file"
    assert not os.path.exists(spool["path"] + ".missing")


def test_cat_unknown_id(spool):
    rc, out, err = _cli("spool", "cat", spool["path"], "00FFFFFFFFFF")
    _assert_one_line_error(rc, out, err, "no message 00FFFFFFFFFF")
    rc, out, err = _cli("spool", "cat", spool["path"], _hex(spool["ids"]["gone"]))
    _assert_one_line_error(rc, out, err, "no message")


def test_cat_non_hex_id(spool):
    rc, out, err = _cli("spool", "cat", spool["path"], "not-an-id")
    _assert_one_line_error(rc, out, err, "not a queue id")


def test_spool_without_action():
    rc, out, err = _cli("spool")
    assert "Traceback" not in err
    assert rc == 2, "`tinymta spool` with no action exits %d; stdout %r; stderr %r" % (rc, out[:200], err)
    assert err.startswith("tinymta: ") and err.count("\n") == 1, repr(err)


# --- the library on the same bad input: clear exceptions, the file never reformatted ---------

# name -> {size passed to FileBlockDevice: (exception class, words)}
LIBRARY = {
    "nonexistent": {SIZE: (BlockDeviceError, "no such spool file"),     # opened with create=False
                    None: (BlockDeviceError, "no such spool file")},
    "truncated_partial_sector": {SIZE: (BlockDeviceError, "refusing to use it"),
                                 None: (BlockDeviceError, "not a whole number")},
    "truncated_whole_sectors": {SIZE: (BlockDeviceError, "refusing to use it"),
                                None: (FormatError, "the spool has 16 sectors but the device holds 8")},
    "random_bytes": {SIZE: (FormatError, "no tinymta spool here"), None: (FormatError, "no tinymta spool here")},
    "all_zeros": {SIZE: (FormatError, "no tinymta spool here"), None: (FormatError, "no tinymta spool here")},
    "empty": {SIZE: (BlockDeviceError, "refusing to use it"), None: (BlockDeviceError, "is 0 bytes")},
    "newer_version": {SIZE: (FormatError, "newer"), None: (FormatError, "newer")},
}


@pytest.mark.parametrize("size", [SIZE, None], ids=["size_given", "size_none"])
@pytest.mark.parametrize("case", sorted(LIBRARY))
def test_library_bad_file_raises_and_never_reformats(spool, case, size):
    exc, words = LIBRARY[case][size]
    path = BAD_FILES[case][0](spool["path"])
    before = _sha(path) if os.path.exists(path) else None
    with pytest.raises((SpoolError, BlockDeviceError)) as info:
        dev = FileBlockDevice(path, size=size, block_size=SECTOR, create=case != "nonexistent")
        try:
            Spool(dev)
        finally:
            dev.close()
    assert isinstance(info.value, exc), (type(info.value), info.value)
    assert words in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    if before is None:
        assert not os.path.exists(path), "a missing file was created"
    else:
        assert _sha(path) == before, "the library changed a non-blank file"
    with pytest.raises((SpoolError, BlockDeviceError)):   # also read-only, as the tools open it
        spooltool.open_readonly(path)
    if before is not None:
        assert _sha(path) == before


@pytest.mark.parametrize("block_size", [4096, 65536])
def test_library_wrong_sector_size_never_reformats(spool, block_size):
    path = spool["path"]
    before = _sha(path)
    dev = FileBlockDevice(path, size=SIZE, block_size=block_size)
    try:
        with pytest.raises(FormatError) as info:
            Spool(dev)
    finally:
        dev.close()
    assert "sectors are %d bytes but the device's blocks are %d bytes" % (SECTOR, block_size) in str(info.value)
    assert _sha(path) == before


def test_library_good_spool_mount_does_not_write(spool):
    path = spool["path"]
    before = _sha(path)
    dev = FileBlockDevice(path, size=SIZE, block_size=SECTOR, prog_unit=UNIT)
    try:
        sp = Spool(dev)
        msgs = {m.id: m for m in sp.messages()}
        assert set(msgs) == {spool["ids"][k] for k in ("one", "two", "three")}
        one = msgs[spool["ids"]["one"]]
        assert one.recipients == ["carol@y.example"]
        assert one.all_recipients == ["bob@x.example", "carol@y.example"]
        for k, body in spool["bodies"].items():
            assert b"".join(sp.read(spool["ids"][k])) == body
    finally:
        dev.close()
    assert _sha(path) == before
