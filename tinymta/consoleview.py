"""What the console shows: the status, the queue, one message and the counters, as (data, text).

    data, text = status(server, started)     data: for one line of JSON; text: for a person
    mailq(server)  show(server, msg_id)  stats(server)  message_dict(queue, m, now)  hops_of(queue, now)

`mailq` carries the fields of Postfix's `postqueue -j` (queue_name, queue_id, arrival_time,
message_size, sender, recipients with delay_reason) plus attempts, in_flight and next_try.
A hop is failing when its last error is newer than its last success; its next retry is the
earliest next try of a message whose last error came from it.  Reads only: nothing here
changes the queue or the spool.  This module must not know the transports or the commands.
"""
from tinymta import __version__, compat
from tinymta.netaddr import format_hostport
from tinymta.spoolfmt import format_id


def age(seconds):
    """A short human duration: 45s, 5m12s, 3h04m, 2d05h."""
    s = max(0, int(seconds))
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def count(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def counters(server):
    """The server's and the relay's counters since start, in one dict."""
    out = dict(server.stats)
    for k, v in server.relay.stats.items():
        out[k] = v
    return out


def message_dict(queue, m, now):
    e = queue.entries.get(m.id)
    state = "active"
    reason = None
    if e is not None:
        state = "hold" if e.held else ("deferred" if e.attempts else "active")
        if e.last_error:
            reason = "%s (%s, at %s)" % (e.last_error[2], e.last_error[0], e.last_error[1])
    return {"queue_name": state, "queue_id": format_id(m.id), "arrival_time": m.arrived,
            "message_size": m.size, "sender": m.sender,
            "recipients": [{"address": r, "delay_reason": reason} for r in m.recipients],
            "delivered": [r for r in m.all_recipients if r not in m.recipients],
            "attempts": e.attempts if e else 0, "in_flight": bool(e and e.busy),
            "next_try": e.next_try if e and not e.held else None}


def hops_of(queue, now):
    out = []
    for hop in sorted(queue.hops):
        ok_t, err_t, err = queue.hops[hop]
        nxt = None
        for e in queue.entries.values():
            if e.last_error and e.last_error[0] == hop and not e.held and not e.busy:
                nxt = e.next_try if nxt is None else min(nxt, e.next_try)
        failing = err_t is not None and (ok_t is None or err_t >= ok_t)
        out.append({"hop": hop, "last_ok": ok_t, "last_error_time": err_t,
                    "last_error_stage": err[0] if err else None, "last_error": err[1] if err else None,
                    "failing": failing, "next_retry": nxt})
    return out


def status(server, started):
    srv, now = server, compat.unix_time()
    queue = srv.relay.queue
    st = srv.spool.stats()
    wear = st["erase_counts"]
    active, deferred, held = queue.counts()
    oldest = None
    for e in queue.entries.values():
        if oldest is None or e.arrived < oldest:
            oldest = e.arrived
    totals = counters(srv)
    hops = hops_of(queue, now)
    pct = 100 * st["used"] // max(1, st["capacity"])
    data = {"version": __version__, "hostname": srv.hostname, "uptime": now - started,
            "listening": [format_hostport(a) for a in srv.cfg.server.listen], "relay": srv.cfg.relay.mode,
            "spool": {"used": st["used"], "free": st["free"], "capacity": st["capacity"],
                      "percent": pct, "messages": st["messages"], "free_sectors": st["free_sectors"],
                      "erase_min": min(wear), "erase_max": max(wear)},
            "queue": {"active": active, "deferred": deferred, "held": held,
                      "in_flight": len(srv.relay.active)},
            "oldest_age": None if oldest is None else now - oldest,
            "since_start": totals, "hops": hops}
    lines = [
        "tinymta %s on %s, up %s, listening on %s, relay %s" % (
            __version__, srv.hostname, age(data["uptime"]), " ".join(data["listening"]), data["relay"]),
        "spool: %d of %d bytes used (%d%%), %d free, %s, wear %d..%d erases" % (
            st["used"], st["capacity"], pct, st["free"], count(st["messages"], "message"), min(wear), max(wear)),
        "queue: %d active, %d deferred, %d held, %d in delivery%s" % (
            active, deferred, held, len(srv.relay.active),
            "" if oldest is None else "; oldest %s" % age(now - oldest)),
        "since start: %d received, %d delivered, %d bounced, %d deferrals, %d rejected, %d connections" % (
            totals.get("received", 0), totals.get("delivered", 0), totals.get("bounced", 0),
            totals.get("deferred", 0), totals.get("rejected", 0), totals.get("connections", 0)),
    ]
    for h in hops:
        parts = ["last ok %s ago" % age(now - h["last_ok"]) if h["last_ok"] is not None else "never ok"]
        if h["last_error"]:
            parts.append("last error %s ago at %s: %s" % (
                age(now - h["last_error_time"]), h["last_error_stage"], h["last_error"]))
        if h["next_retry"] is not None:
            parts.append("next retry in %s" % age(h["next_retry"] - now))
        lines.append("hop %s: %s" % (h["hop"], "; ".join(parts)))
    if not hops:
        lines.append("hops: none tried yet")
    return data, "\n".join(lines)


def mailq(server):
    now = compat.unix_time()
    msgs = [message_dict(server.relay.queue, m, now) for m in server.spool.messages()]
    if not msgs:
        return {"queue": []}, "queue is empty"
    lines = ["%-12s %8s %-20s %-8s %s" % ("ID", "SIZE", "ARRIVED", "STATE", "SENDER/RECIPIENTS")]
    for m in msgs:
        lines.append("%s %8d %-20s %-8s <%s>" % (m["queue_id"], m["message_size"],
                     compat.iso_time(m["arrival_time"]), m["queue_name"], m["sender"]))
        for r in m["recipients"]:
            lines.append("%51s<%s>" % ("", r["address"]))
        reason = m["recipients"][0]["delay_reason"] if m["recipients"] else None
        if reason:
            lines.append("%51s(%s)" % ("", reason))
    lines.append("-- %s, %d bytes" % (count(len(msgs), "message"), sum(m["message_size"] for m in msgs)))
    return {"queue": msgs}, "\n".join(lines)


def show(server, msg_id):
    sp, now = server.spool, compat.unix_time()
    m = sp.message(msg_id)
    d = message_dict(server.relay.queue, m, now)
    head = bytearray()
    for chunk in sp.read(msg_id):
        head.extend(chunk)
        if b"\r\n\r\n" in head or len(head) > 4096:
            break
    end = head.find(b"\r\n\r\n")
    d["headers"] = compat.decode_utf8_replace(bytes(head[:end if end >= 0 else 4096]))
    lines = ["id: %s (%s)" % (d["queue_id"], d["queue_name"] + (", in delivery" if d["in_flight"] else "")),
             "arrived: %s, %d bytes, %d attempts" % (compat.iso_time(m.arrived), m.size, d["attempts"]),
             "from: <%s>" % m.sender]
    for r in d["recipients"]:
        lines.append("to: <%s> pending%s" % (r["address"], "; " + r["delay_reason"] if r["delay_reason"] else ""))
    for r in d["delivered"]:
        lines.append("to: <%s> done" % r)
    if d["next_try"] is not None:
        lines.append("next try: in %s" % age(d["next_try"] - now))
    lines.append("")
    lines.extend(d["headers"].split("\r\n"))
    return d, "\n".join(lines)


def stats(server):
    srv = server
    st = srv.spool.stats()
    data = {"since_start": counters(srv),
            "spool": {"sectors": st["sectors"], "sector_size": st["sector_size"], "free_sectors":
                      st["free_sectors"], "erase_counts": st["erase_counts"], "head_seq": st["head_seq"],
                      "tail_seq": st["tail_seq"], "pending_acks": st["pending_acks"]}}
    lines = ["%s: %d" % (k, data["since_start"][k]) for k in sorted(data["since_start"])]
    lines.append("spool: %d sectors of %d bytes, %d free; erase counts %s" % (
        st["sectors"], st["sector_size"], st["free_sectors"], " ".join(str(n) for n in st["erase_counts"])))
    return data, "\n".join(lines)
