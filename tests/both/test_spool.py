"""Spool behaviour: round trips, streaming, delivery, full spool, wear, bad media.

Runs on CPython and MicroPython.  Power loss has its own campaign (test_powerloss).
"""
from tinymta import compat
from tinymta import spoolfmt as fmt
from tinymta.flashsim import FlashSim
from tinymta.spool import Spool, SpoolFull, SpoolCorrupt, SpoolError
from spoolharness import make_body, raises

compat.set_log_sink(lambda line: None)


def _put(sp, body, rcpts=("a@x.example",), chunk=1000):
    w = sp.writer("s@lan.example", list(rcpts))
    for i in range(0, len(body), chunk):
        w.write(body[i:i + chunk])
    return w.commit()


def _read(sp, msg_id):
    return b"".join(sp.read(msg_id))


def test_blank_device_is_formatted_and_empty():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    assert len(sp) == 0 and list(sp.messages()) == []
    st = sp.stats()
    assert st["sectors"] == 8 and st["sector_size"] == 4096 and st["prog_unit"] == 256


def test_round_trip_small_and_multi_sector():
    dev = FlashSim(16, 4096, 256)
    sp = Spool(dev)
    small = b"Subject: hi\r\n\r\nbody\r\n"
    big = make_body(7, 20000)                    # spans several fragments and sectors
    a = _put(sp, small, ["x@y.example", "z@y.example"])
    b = _put(sp, big, chunk=333)
    for s in (sp, Spool(dev)):                   # live and after a remount
        assert _read(s, a) == small and _read(s, b) == big
        ms = list(s.messages())
        assert [m.id for m in ms] == [a, b]
        assert ms[0].sender == "s@lan.example" and ms[0].recipients == ["x@y.example", "z@y.example"]
        assert ms[0].size == len(small) and ms[1].size == len(big)
        assert abs(ms[0].arrived - compat.unix_time()) < 100


def test_reads_stream_in_bounded_chunks():
    sp = Spool(FlashSim(32, 4096, 256))
    body = make_body(3, 60000)
    mid = _put(sp, body, chunk=4096)
    sizes = [len(c) for c in sp.read(mid)]
    assert sum(sizes) == len(body) and max(sizes) <= 4096


def test_interleaved_writers():
    dev = FlashSim(16, 4096, 256)
    sp = Spool(dev)
    bodies = [make_body(i, 3000 + 1000 * i) for i in range(1, 4)]
    ws = [sp.writer("s@x", ["r%d@x" % i]) for i in range(3)]
    for off in range(0, 7000, 500):
        for i in range(3):
            ws[i].write(bodies[i][off:off + 500])
    ids = [w.commit() for w in ws]
    sp2 = Spool(dev)
    for i in range(3):
        assert _read(sp2, ids[i]) == bodies[i]


def test_abort_and_uncommitted_leave_nothing():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    w = sp.writer("s@x", ["r@x"])
    w.write(make_body(1, 9000))
    w.abort()
    w2 = sp.writer("s@x", ["r@x"])
    w2.write(make_body(2, 9000))                 # never committed
    keep = _put(sp, b"kept")
    raises(SpoolError, w.write, b"more")
    assert [m.id for m in Spool(dev).messages()] == [keep]


def test_group_commit_needs_one_sync():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    ws = [sp.writer("s@x", ["r@x"]) for _ in range(3)]
    for i in range(3):
        ws[i].write(b"message %d" % i)
    ids = [w.commit(False) for w in ws]
    assert len(sp) == 0                          # not durable yet: not offered for delivery
    sp.flush()
    assert len(sp) == 3 and [b"".join(Spool(dev).read(i)) for i in ids] == [b"message 0", b"message 1", b"message 2"]


def test_ack_partial_then_all_and_flush():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    mid = _put(sp, b"x", ["a@x", "b@x", "c@x"])
    sp.ack(mid, ["b@x"])
    sp.flush()
    assert list(Spool(dev).messages())[0].recipients == ["a@x", "c@x"]
    sp.ack(mid, ["a@x", "c@x"])
    assert mid not in sp                         # gone at once in RAM
    sp.flush()
    assert len(Spool(dev)) == 0
    raises(SpoolError, sp.ack, mid, ["a@x"])
    other = _put(sp, b"y", ["a@x"])
    raises(SpoolError, sp.ack, other, ["nobody@x"])


def test_ack_many_recipients():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    rcpts = ["r%d@x" % i for i in range(100)]
    mid = _put(sp, b"x", rcpts)
    sp.ack(mid, rcpts[:70])
    sp.flush()
    assert list(Spool(dev).messages())[0].recipients == rcpts[70:]
    sp.ack(mid, rcpts[70:])
    sp.flush()
    assert len(Spool(dev)) == 0


def test_full_spool_refuses_cleanly_and_recovers():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    body = make_body(5, 3000)
    ids = []
    try:
        for _ in range(100):
            ids.append(_put(sp, body))
    except SpoolFull:
        pass
    assert 3 < len(ids) < 100
    raises(SpoolFull, _put, sp, body)           # still full: refused again, no damage
    sp2 = Spool(dev)
    assert [m.id for m in sp2.messages()] == ids and all(_read(sp2, i) == body for i in ids)
    for i in ids[:3]:
        sp2.ack(i, ["a@x.example"])
    sp2.flush()
    more = _put(sp2, body)                       # room again once mail is delivered
    assert _read(Spool(dev), more) == body


def test_one_huge_message_is_refused_not_looped():
    sp = Spool(FlashSim(8, 512, 16))
    raises(SpoolFull, _put, sp, make_body(1, 50000))
    assert len(sp) == 0
    assert _read(sp, _put(sp, b"small")) == b"small"


def test_wear_is_level_after_many_laps():
    dev = FlashSim(8, 512, 16)
    sp = Spool(dev)
    live = []
    for i in range(1, 400):
        live.append(_put(sp, make_body(i, 50 + (i * 37) % 400)))
        if len(live) > 2 or i % 5 == 0:
            sp.ack(live.pop(0), ["a@x.example"])
    assert min(dev.erase_counts) >= 10, dev.erase_counts
    assert max(dev.erase_counts) - min(dev.erase_counts) <= 2, dev.erase_counts
    st = sp.stats()["erase_counts"]
    assert max(st) - min(st) <= 2


def test_deferred_message_survives_many_laps():
    dev = FlashSim(8, 512, 16)
    sp = Spool(dev)
    old = _put(sp, make_body(1, 300))            # never delivered: relocated every lap
    for i in range(2, 200):
        sp.ack(_put(sp, make_body(i, 200)), ["a@x.example"])
    assert _read(Spool(dev), old) == make_body(1, 300)


def test_mount_is_idempotent_and_write_free():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    for i in range(5):
        _put(sp, make_body(i, 2000))
    ops = dev.ops
    a, b = Spool(dev), Spool(dev)
    assert dev.ops == ops
    assert [m.id for m in a.messages()] == [m.id for m in b.messages()]
    assert a.stats()["head_seq"] == b.stats()["head_seq"]


def test_new_ids_after_remount():
    dev = FlashSim(8, 4096, 256)
    first = _put(Spool(dev), b"a")
    second = _put(Spool(dev), b"b")
    assert second != first and second > first


def test_corruption_is_never_returned():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    body = b"Subject: c\r\n\r\n" + b"Z" * 500
    mid = _put(sp, body)
    for i in range(8):                           # the same boot moves on to later sectors
        _put(sp, make_body(i, 1500))
    at = dev.mem.find(b"ZZZZ")
    dev.mem[at + 10] ^= 0x01                     # a bit decays after acceptance
    raises(SpoolCorrupt, _read, sp, mid)       # a reader never gets the bad bytes
    sp2 = Spool(dev)
    assert mid not in sp2 and sp2.scan.corrupt == 1


def test_blank_format_and_foreign_data():
    dev = FlashSim(8, 512, 16)
    _put(Spool(dev), b"x")
    Spool.format(dev)
    assert len(Spool(dev)) == 0
    junk = FlashSim(8, 512, 16)
    for i in range(len(junk.mem)):
        junk.mem[i] = (i * 7919) & 0xFF
    before = bytes(junk.mem)
    e = raises(fmt.FormatError, Spool, junk)
    assert "no tinymta spool" in str(e) and bytes(junk.mem) == before


def test_newer_format_version_is_refused():
    dev = FlashSim(8, 512, 16)
    _put(Spool(dev), b"x")
    for blk in range(8):
        a = blk * 512
        if dev.mem[a:a + 4] == fmt.MAGIC:
            dev.mem[a + 4] = 2
            crc = compat.crc32(bytes(dev.mem[a:a + 36]))
            dev.mem[a + 36:a + 40] = crc.to_bytes(4, "little")
    e = raises(fmt.FormatError, Spool, dev)
    assert "newer" in str(e)


def test_readonly_spool_does_not_write():
    dev = FlashSim(8, 512, 16)
    mid = _put(Spool(dev), b"x", ["a@x"])
    ops = dev.ops
    ro = Spool(dev, readonly=True)
    raises(SpoolError, ro.writer, "s@x", ["a@x"])
    raises(SpoolError, ro.ack, mid, ["a@x"])
    assert dev.ops == ops
    raises(fmt.FormatError, Spool, FlashSim(8, 512, 16), None, 2, 0.75, None, None, None, None, True)


def test_random_workloads_keep_promises_without_power_cuts():
    """Long random runs near full: flushed ACKs never come back, committed mail is never lost.

    (A reclaim once wrote the application's queued ACKs, ran out of room and dropped them.)
    """
    from spoolharness import Rng
    for geo in ((8, 512, 16), (12, 4096, 256)):
        for seed in range(1, 7):
            rng = Rng(seed)
            dev = FlashSim(geo[0], geo[1], geo[2], seed=seed)
            sp = Spool(dev)
            live = {}          # msg_id -> (body, recipients left)
            gone = set()
            for step in range(250):
                r = rng.below(10)
                if r < 5:
                    body = make_body(step, 10 + rng.below(geo[1] * 2))
                    rc = ["r%d@x" % i for i in range(1 + rng.below(3))]
                    try:
                        live[_put(sp, body, rc, 1 + rng.below(700))] = (body, rc)
                    except SpoolFull:
                        pass
                elif r < 9 and live:
                    mid = sorted(live)[rng.below(len(live))]
                    body, rc = live[mid]
                    take = rc[:1 + rng.below(len(rc))]
                    try:
                        sp.ack(mid, take)
                    except SpoolFull:
                        pass        # the ACK stays queued in RAM
                    left = [x for x in rc if x not in take]
                    if left:
                        live[mid] = (body, left)
                    else:
                        del live[mid]
                        gone.add(mid)
                else:
                    try:
                        sp.flush()
                    except SpoolFull:
                        continue
                    again = Spool(dev)
                    ids = set(m.id for m in again.messages())
                    assert not (ids & gone), "delivered mail came back: seed %d step %d" % (seed, step)
                    for mid in live:
                        assert mid in ids and _read(again, mid) == live[mid][0]
                        assert list(again.message(mid).recipients) == live[mid][1]


def test_failed_program_verify_recovers_like_a_power_cut():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    a = _put(sp, b"first")
    dev.bad.add(sp.head_pos)                     # the sector wears out: programs do not stick
    w = sp.writer("s@x", ["r@x"])
    w.write(make_body(1, 500))
    e = raises(SpoolError, w.commit)
    assert "verify failed" in str(e)
    b = _put(sp, b"second")                      # the spool recovers and goes on in a new sector
    sp.ack(a, ["a@x.example"])
    sp.flush()
    again = Spool(dev)
    assert [m.id for m in again.messages()] == [b] and _read(again, b) == b"second"


def test_damaged_record_header_is_reported_not_hidden():
    dev = FlashSim(8, 4096, 256)
    sp = Spool(dev)
    _put(sp, b"Subject: one\r\n\r\nMARKER-ONE")
    _put(sp, b"Subject: two\r\n\r\nMARKER-TWO")
    assert Spool(dev).scan.corrupt == 0          # a clean spool reports nothing
    at = dev.mem.find(b"MARKER-ONE")
    while fmt.parse_record_header(bytes(dev.mem[at:at + 32])) is None:   # back to its record header
        at -= 1
    dev.mem[at + 12] ^= 0x04                     # decay inside the header (its msg_id)
    again = Spool(dev)
    assert again.scan.corrupt == 1 and "lost" in again.scan.damage[-1]


class _BareFlash:
    """Only the MicroPython block protocol, as rp2.Flash and esp32.Partition offer it."""

    def __init__(self, flash):
        self.flash = flash

    def readblocks(self, n, buf, off=0):
        self.flash.readblocks(n, buf, off)

    def writeblocks(self, n, buf, off=None):
        self.flash.writeblocks(n, buf, off)

    def ioctl(self, op, arg):
        return self.flash.ioctl(op, arg)


def test_bare_block_protocol_device():
    flash = FlashSim(8, 4096, 256)
    sp = Spool(_BareFlash(flash), 256)
    ids = []
    for i in range(30):                          # wraps: every sector gets erased
        ids.append(_put(sp, make_body(i, 3000)))
        if len(ids) > 2:
            sp.ack(ids[-3], ["a@x.example"])
    sp.flush()
    again = Spool(_BareFlash(flash))
    assert [m.id for m in again.messages()] == ids[-2:] and min(flash.erase_counts) >= 1
