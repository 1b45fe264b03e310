"""Power-loss campaign: a cut after every single program and erase, for every fault model.

Two geometries: rp2-like (4 KiB sectors, 256 B program unit) and a tiny one
(8 sectors of 512 B, 16 B unit) that wraps many times.  Each workload accepts,
delivers, flushes and wraps the spool several times; after every cut the device
is remounted, the oracle checks the invariants (spoolharness), and the workload
runs on to its end.  A second cut during the recovery is tried as well.

Both runtimes cover every cut point (STRIDE = 1; raise it to sample when a
slower board needs it).  The counts are printed and reported by
conftest.py at the end of the pytest run.
"""
import spoolharness as H
from tinymta.flashsim import FAULTS

STRIDE = 1
GEOMETRIES = {
    "tiny": (dict(sectors=8, sector=512, unit=16), (11, 60, 20, 300, 2)),
    "rp2": (dict(sectors=16, sector=4096, unit=256), (12, 70, 100, 6000, 4)),
}
COVERED = []   # (name, cut points, remounts) for the summary line


def _campaign(name):
    geo, params = GEOMETRIES[name]
    script = H.make_script(*params)
    total = H.count_ops(geo, script, {})
    dev = H.new_device(geo)
    sp = H.run(dev, H.Oracle(script), {}, finish=False)
    laps = sp.stats()["head_seq"] // geo["sectors"]
    assert laps >= 3, "the workload must wrap the spool several times (%d laps)" % laps
    cuts = mounts = 0
    for fault in FAULTS:
        for cut in range(1, total + 1, STRIDE):
            mounts += H.cut_once(geo, script, {}, fault, cut)
            cuts += 1
    COVERED.append(("%s (%d ops, %d laps, faults %s)" % (name, total, laps, "/".join(FAULTS)), cuts, mounts))
    print("power-loss %s: %d cut points covered, %d remounts checked" % (name, cuts, mounts))


def test_powerloss_every_cut_tiny():
    _campaign("tiny")


def test_powerloss_every_cut_rp2():
    _campaign("rp2")


def test_powerloss_second_cut_right_after_a_remount():
    """A second cut within the first 12 writes after the remount that followed a cut (mount itself
    writes nothing, test_spool checks that): the first writes on a freshly recovered spool."""
    geo, params = GEOMETRIES["tiny"]
    script = H.make_script(*params)
    total = H.count_ops(geo, script, {})
    cuts = mounts = 0
    for fault in ("torn", "bits"):
        for first in range(1, total + 1, 3 * STRIDE):
            for second in range(1, 13, STRIDE):
                mounts += H.cut_once(geo, script, {}, fault, first, second)
                cuts += 1
    COVERED.append(("tiny, second cut right after a remount", cuts, mounts))
    print("power-loss double cuts: %d covered" % cuts)


def test_powerloss_near_sequence_wrap():
    """The same workload with sector sequence numbers crossing 2**32."""
    from tinymta.spool import Spool
    geo, params = GEOMETRIES["tiny"]
    script = H.make_script(*params)
    total = H.count_ops(geo, script, {})
    cuts = 0
    for cut in range(1, total + 1, 4 * STRIDE):
        dev = H.new_device(geo)
        Spool.format(dev, 16, 0xFFFFFFFF - 20)
        oracle = H.Oracle(script)
        dev.arm(cut, "torn")
        try:
            H.run(dev, oracle, {}, finish=False)
        except H.PowerLoss:
            pass
        dev.power_on()
        sp = H.run(dev, oracle, {})
        cuts += 1
    assert sp.stats()["head_seq"] < 1000, "sequence numbers did not wrap"
    COVERED.append(("tiny, sequence wrap", cuts, cuts))
