"""Offline spool inspection: `tinymta spool check|dump|cat FILE`.

It opens a spool file read-only, runs the same recovery scan a mount runs (so it
shows exactly what tinymta would see after a restart) and reports the live
messages, free space, wear and any damage.  It never writes to the file.

This module must not know SMTP or the running MTA; it only reads a spool.
"""
import json
import sys

from tinymta import compat
from tinymta import spoolfmt as fmt
from tinymta.blockdev import FileBlockDevice
from tinymta.spool import Spool


def open_readonly(path):
    sector, unit = FileBlockDevice.probe(path)
    dev = FileBlockDevice(path, block_size=sector, prog_unit=unit, create=False, readonly=True)
    try:
        return Spool(dev, readonly=True)
    except fmt.SpoolError as e:
        raise type(e)("%s: %s" % (path, e))


def _summary(sp):
    st = sp.stats()
    sc = sp.scan
    wear = st["erase_counts"]
    return {
        "sectors": st["sectors"], "sector_size": st["sector_size"], "prog_unit": st["prog_unit"],
        "capacity": st["capacity"], "used": st["used"], "free": st["free"], "messages": st["messages"],
        "head_seq": st["head_seq"], "tail_seq": st["tail_seq"], "free_sectors": st["free_sectors"],
        "erase_min": min(wear), "erase_max": max(wear), "erase_counts": wear,
        "records": sc.records, "interrupted_writes": sc.torn, "incomplete_discarded": sc.incomplete,
        "corrupt_messages": sc.corrupt, "damage": list(sc.damage),
    }


def _message_dict(m):
    return {"id": fmt.format_id(m.id), "arrival_time": m.arrived, "size": m.size, "sender": m.sender,
            "recipients": [{"address": r, "delivered": r not in m.recipients} for r in m.all_recipients]}


def check(path, out):
    """Verify every live message end to end; 0 when clean, 1 when damage was found."""
    sp = open_readonly(path)
    s = _summary(sp)
    bad = 0
    for m in sp.messages():
        try:
            for _ in sp.read(m.id):
                pass
        except fmt.SpoolError as e:
            bad += 1
            s["damage"].append("message %s: %s" % (fmt.format_id(m.id), e))
    out.write("%s: %d sectors of %d bytes (program unit %d), window seq %d..%d\n"
              % (path, s["sectors"], s["sector_size"], s["prog_unit"], s["tail_seq"], s["head_seq"]))
    out.write("messages: %d live, %d bytes used, %d free of %d (%d%%)\n"
              % (s["messages"], s["used"], s["free"], s["capacity"], 100 * s["used"] // max(1, s["capacity"])))
    out.write("wear: erase counts %d..%d\n" % (s["erase_min"], s["erase_max"]))
    out.write("interrupted writes: %d, incomplete messages discarded: %d (normal after a power cut)\n"
              % (s["interrupted_writes"], s["incomplete_discarded"]))
    damaged = s["corrupt_messages"] + bad
    for d in s["damage"]:
        out.write("damage: %s\n" % d)
    out.write("result: %s\n" % ("DAMAGED (%d corrupt messages)" % damaged if damaged else "ok"))
    return 1 if damaged else 0


def dump(path, out, as_json=False):
    sp = open_readonly(path)
    s = _summary(sp)
    msgs = [_message_dict(m) for m in sp.messages()]
    if as_json:
        s["queue"] = msgs
        out.write(json.dumps(s) + "\n")
        return 0
    out.write("spool %s: %d messages, %d/%d bytes used, erase counts %d..%d\n"
              % (path, s["messages"], s["used"], s["capacity"], s["erase_min"], s["erase_max"]))
    for m in msgs:
        out.write("%s %8d %s  <%s>\n" % (m["id"], m["size"], compat.iso_time(m["arrival_time"]), m["sender"]))
        for r in m["recipients"]:
            out.write("%24s<%s>%s\n" % ("", r["address"], "  (delivered)" if r["delivered"] else ""))
    for d in s["damage"]:
        out.write("damage: %s\n" % d)
    return 0


def cat(path, msg_text, out=None):
    out = out or sys.stdout.buffer
    sp = open_readonly(path)
    msg_id = fmt.parse_id(msg_text)
    if msg_id not in sp:
        raise fmt.SpoolError("no message %s in %s" % (msg_text, path))
    for chunk in sp.read(msg_id):
        out.write(chunk)
    out.flush()
    return 0
