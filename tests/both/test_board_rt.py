"""The board runtime (tinymta/board_rt.py) with stand-in radios, flash, filesystems and watchdogs: the
state the LED shows, Wi-Fi at boot and in the loop, where the spool lives (a file on the board's
filesystem, rp2.Flash inside the storage area, an esp32.Partition), the watchdog and the LED pin.
Both runtimes (tests/mp_runner.py runs it under MicroPython)."""
import os

from tinymta import board_rt
from tinymta.flashsim import FlashSim
from tinymta.config import from_dict
from tinymta.queue import Queue


# --- the state the LED shows ----------------------------------------------------------------------

class FakeSpool:
    def __init__(self, used, capacity):
        self.used, self.capacity, self.max_fill = used, capacity, 0.75

    def stats(self):
        return {"used": self.used, "capacity": self.capacity}


class FakeServer:
    def __init__(self, spool, queue):
        self.spool = spool

        class Relay:
            pass
        self.relay = Relay()
        self.relay.queue = queue


def test_mta_state_from_queue_hops_and_spool():
    q = Queue(300, 3600, 432000)
    srv = FakeServer(FakeSpool(0, 100000), q)
    assert board_rt.mta_state(srv) == "idle"
    q.add(1, 0, 0)
    assert board_rt.mta_state(srv) == "pending"
    q.begin(1)
    q.deferred(1, 10, ("smarthost", "CONNECT", "refused"))
    assert board_rt.mta_state(srv) == "error"           # its last attempt failed
    q.hold(1)
    assert board_rt.mta_state(srv) == "pending"         # held on purpose: not an error
    q.hop_failed("mx.example", 20, "CONNECT", "timed out")
    assert board_rt.mta_state(srv) == "error"           # a hop failing now
    q.hop_ok("mx.example", 30)
    assert board_rt.mta_state(srv) == "pending"
    q.remove(1)
    assert board_rt.mta_state(srv) == "idle"
    srv.spool.used = 59999                              # under 80% of the 75% the spool admits
    assert board_rt.mta_state(srv) == "idle"
    srv.spool.used = 60000
    assert board_rt.mta_state(srv) == "full"
    srv.relay = None
    srv.spool.used = 0
    assert board_rt.mta_state(srv) == "idle"


# --- Wi-Fi ------------------------------------------------------------------------------------------

class FakeNet:
    STA_IF = 0
    STAT_IDLE = 0
    STAT_CONNECTING = 1
    STAT_WRONG_PASSWORD = -3
    STAT_NO_AP_FOUND = -2
    STAT_CONNECT_FAIL = -1
    STAT_GOT_IP = 3

    def __init__(self, up_after=None, status=1):
        self.up_after, self.st = up_after, status
        self.wlan = None

    def WLAN(self, which):
        if self.wlan is None:
            self.wlan = FakeWlan(self)
        return self.wlan


class FakeWlan:
    def __init__(self, net):
        self.net = net
        self.polls = 0
        self.connects = []
        self.on = False
        self.up = False

    def active(self, v):
        self.on = v

    def config(self, **kw):
        raise AttributeError("no pm here")

    def connect(self, ssid, password):
        self.connects.append((ssid, password))

    def isconnected(self):
        self.polls += 1
        if self.net.up_after is not None and self.polls > self.net.up_after:
            self.up = True
        return self.up

    def status(self):
        return self.net.st

    def ifconfig(self):
        return ("192.168.1.50", "255.255.255.0", "192.168.1.1", "192.168.1.1")


def _clock():
    now = [0]

    def sleep(ms):
        now[0] += ms
    return now, sleep, lambda: now[0]


def test_wifi_connect_waits_a_bounded_time():
    now, sleep, ticks = _clock()
    net = FakeNet(up_after=5)
    w = board_rt.wifi_connect(net, "office", "pw", 8000, sleep, ticks)
    assert w.up and w.on and w.connects == [("office", "pw")] and now[0] < 1000
    now, sleep, ticks = _clock()
    net = FakeNet(up_after=None)
    w = board_rt.wifi_connect(net, "office", None, 8000, sleep, ticks)
    assert not w.up and 8000 <= now[0] < 8200 and w.connects == [("office", "")]
    now, sleep, ticks = _clock()
    net = FakeNet(up_after=None, status=FakeNet.STAT_WRONG_PASSWORD)
    w = board_rt.wifi_connect(net, "office", "bad", 8000, sleep, ticks)
    assert not w.up and now[0] == 0                     # a wrong password ends the wait at once


def test_wifi_watch_joins_again_after_a_loss():
    net = FakeNet(up_after=0)
    wlan = net.WLAN(0)
    watch = board_rt.WifiWatch(wlan, "office", "pw", 30000)
    watch.hook(0)
    assert wlan.connects == []
    wlan.net.up_after = None
    wlan.up = False                                     # the link drops
    watch.hook(10000)
    assert wlan.connects == []                          # checked only every retry_ms
    watch.hook(30000)
    assert wlan.connects == [("office", "pw")]
    watch.hook(40000)
    assert len(wlan.connects) == 1
    watch.hook(60000)
    assert len(wlan.connects) == 2


def test_boot_skips_wifi_without_a_network_module_or_ssid():
    path = "_test_board_rt_boot.json"
    try:
        with open(path, "w") as f:
            f.write('{"board": {"wifi_ssid": "office", "wifi_password": "pw"}}')
        assert board_rt.boot(path, network=object()) is None        # no WLAN in this firmware
        net = FakeNet(up_after=0)
        assert board_rt.boot(path, network=net) is net.wlan and net.wlan.connects == []  # already up
        with open(path, "w") as f:
            f.write('{"server": {}}')
        assert board_rt.boot(path, network=net) is None
        assert board_rt.read_board_section("_test_board_rt_missing.json") == {}
    finally:
        os.remove(path)


# --- where the spool lives -------------------------------------------------------------------------------

def _cfg(path, size=65536, sector=4096, unit=256):
    return from_dict({"spool": {"path": path, "size": size, "sector_size": sector, "prog_unit": unit},
                      "server": {"max_message_size": 1024}})


class FakeRp2:
    def __init__(self, storage=848 * 1024):
        self.storage = storage
        self.made = []
        rp2 = self

        class Flash:
            def __init__(self, start=None, len=None):
                if start is None:
                    self.dev = None
                    self.n = rp2.storage // 4096
                else:
                    rp2.made.append((start, len))
                    self.dev = FlashSim(len // 4096, 4096, 256)
                    self.n = len // 4096

            def ioctl(self, op, arg):
                if self.dev is not None:
                    return self.dev.ioctl(op, arg)
                return {4: self.n, 5: 4096}.get(op, 0)

            def readblocks(self, n, buf, off=0):
                self.dev.readblocks(n, buf, off)

            def writeblocks(self, n, buf, off=None):
                self.dev.writeblocks(n, buf, off)
        self.Flash = Flash


class FakeOs:
    def __init__(self, fs_blocks):
        self.fs_blocks = fs_blocks

    def statvfs(self, path):
        return (4096, 4096, self.fs_blocks, 0, 0, 0, 0, 0, 0, 255)


def _startup_error(fn):
    from tinymta.mta import StartupError
    try:
        fn()
    except StartupError as e:
        return str(e)
    raise AssertionError("no StartupError")


def test_rp2_spool_in_the_flash_storage_area():
    rp2 = FakeRp2()
    cfg = _cfg("flash@344064")
    sp = board_rt.open_spool(cfg, rp2=rp2, esp32=False, os=FakeOs(84))     # a 336K filesystem below it
    assert rp2.made == [(344064, 65536)] and sp.unit == 256 and sp.n == 16
    assert len(sp) == 0
    msg = _startup_error(lambda: board_rt.open_spool(cfg, rp2=FakeRp2(), esp32=False, os=FakeOs(212)))
    assert "filesystem at /" in msg and "344064" in msg          # stock firmware: littlefs over all of it
    assert '"/tinymta.spool"' in msg                              # ... and the way out
    msg = _startup_error(lambda: board_rt.open_spool(_cfg("flash@4097"), rp2=rp2, esp32=False, os=FakeOs(0)))
    assert "4097" in msg
    msg = _startup_error(lambda: board_rt.open_spool(_cfg("flash@868352"), rp2=rp2, esp32=False, os=FakeOs(0)))
    assert "do not fit" in msg
    msg = _startup_error(lambda: board_rt.open_spool(_cfg("flash", 131072, 8192), rp2=rp2, esp32=False,
                                                     os=FakeOs(0)))
    assert "sector" in msg
    msg = _startup_error(lambda: board_rt.open_spool(_cfg("flash@x"), rp2=rp2, esp32=False, os=FakeOs(0)))
    assert "offset" in msg


class FakeEsp32:
    def __init__(self, size):
        part = FlashSim(size // 4096, 4096, 4) if size else None
        self.asked = []
        esp = self

        class Partition:
            TYPE_DATA = 1

            @staticmethod
            def find(kind, label=None, block_size=4096):
                esp.asked.append((kind, label, block_size))
                return [part] if part is not None and label == "spool" else []
        self.Partition = Partition


def test_esp32_partition_and_file_fallback():
    esp = FakeEsp32(65536)
    sp = board_rt.open_spool(_cfg("spool", unit=4), rp2=False, esp32=esp)
    assert esp.asked == [(1, "spool", 4096)] and sp.unit == 4
    msg = _startup_error(lambda: board_rt.open_spool(_cfg("spool", 131072), rp2=False, esp32=FakeEsp32(65536)))
    assert "65536" in msg and "131072" in msg
    msg = _startup_error(lambda: board_rt.open_spool(_cfg("spool@4096"), rp2=False, esp32=FakeEsp32(65536)))
    assert "whole" in msg
    # on hardware a relative name is a partition; a missing one is an error, never a file by surprise
    msg = _startup_error(lambda: board_rt.open_spool_device(_cfg("spool2"), rp2=False, esp32=FakeEsp32(65536)))
    assert 'no flash partition "spool2"' in msg and "/tinymta.spool" in msg
    assert board_rt.open_spool_device(_cfg("tinymta.spool"), rp2=False, esp32=False) is None   # a file
    msg = _startup_error(lambda: board_rt.open_spool_device(_cfg("flash@344064"), rp2=False, esp32=False))
    assert "no flash partition" in msg


def _remove(*paths):
    for p in paths:
        try:
            os.remove(p)
        except OSError:
            pass


def test_a_spool_file_is_created_at_full_size_and_no_partition_is_asked():
    path = os.getcwd() + "/_test_board_rt.spool"          # absolute, as the board profiles write it
    _remove(path, path + ".new")
    try:
        rp2, esp = FakeRp2(), FakeEsp32(65536)
        cfg = _cfg(path, unit=4)
        assert board_rt.open_spool_device(cfg, rp2=rp2, esp32=esp) is None
        sp = board_rt.open_spool(cfg, rp2=rp2, esp32=esp)  # first boot: no file yet
        assert rp2.made == [] and esp.asked == []          # neither rp2.Flash nor a partition
        assert os.stat(path)[6] == 65536 and len(sp) == 0 and sp.unit == 4
        w = sp.writer(b"sensor@example.org", [b"ops@example.net"], 5)
        w.write(b"hello")
        w.commit()
        sp.close()
        sp = board_rt.open_spool(cfg, rp2=rp2, esp32=esp)  # the next boot finds the message
        assert len(sp) == 1 and w.id in sp and os.stat(path)[6] == 65536
        sp.close()
        msg = _startup_error(lambda: board_rt.open_spool(_cfg(path, 131072), rp2=rp2, esp32=esp))
        assert "65536" in msg and "131072" in msg          # a spool file of another size is left alone
        assert os.stat(path)[6] == 65536
    finally:
        _remove(path, path + ".new")


# --- watchdog and LED pin -------------------------------------------------------------------------

class FakeMachine:
    def __init__(self):
        self.made = []
        m = self

        class WDT:
            def __init__(self, timeout=0):
                m.made.append(("wdt", timeout))
                self.fed = 0

            def feed(self):
                self.fed += 1

        class Timer:
            PERIODIC = 1

            def __init__(self, n):
                m.made.append(("timer", n))

            def init(self, period=0, mode=0, callback=None):
                m.made.append(("init", period, mode))
                self.callback = callback
                m.timer = self

        class Pin:
            OUT = 1

            def __init__(self, name, mode):
                m.made.append(("pin", name, mode))
        self.WDT, self.Timer, self.Pin = WDT, Timer, Pin


def test_watchdog_clamped_on_rp2_and_fed_by_a_timer_after_a_stop():
    m = FakeMachine()
    assert board_rt.make_watchdog(m, 0) is None and board_rt.make_watchdog(object(), 5000) is None
    w = board_rt.make_watchdog(m, 15000, "rp2")
    assert m.made == [("wdt", 8388)]
    board_rt.make_watchdog(m, 15000, "esp32")
    assert m.made[-1] == ("wdt", 15000)
    t = board_rt.keep_fed(m, w, 8000)
    assert t is m.timer and m.made[-2:] == [("timer", -1), ("init", 2666, 1)]
    m.timer.callback(m.timer)
    assert w.fed == 1
    assert board_rt.keep_fed(m, None, 8000) is None


def test_watchdog_fed_each_pass_and_before_every_blocking_wait():
    from tinymta import compat

    class Srv:
        hooks = []
    m, srv = FakeMachine(), Srv()
    try:
        assert board_rt.watch_over(srv, m, 0) is None and srv.hooks == []
        assert compat.blocking(30) == 30                 # no watchdog: DNS/TLS waits as configured
        w = board_rt.watch_over(srv, m, 8000, "rp2")
        srv.hooks[0](0)
        assert w.fed == 1
        assert compat.blocking(30) == 5.5 and w.fed == 2    # capped to 8000 - 2500 ms, fed first
        assert compat.blocking(2) == 2 and w.fed == 3       # a short wait is left alone
        assert abs(compat.blocking(30, 3) - 5.5 / 3) < 1e-9  # three waits share the budget
        board_rt.watch_over(srv, m, 3000, "esp32")
        assert compat.blocking(30) == 1                     # never under a second
    finally:
        compat.set_blocking_guard(None, 0)


def test_the_loop_failing_resets_the_board_and_ctrl_c_does_not():
    class Srv:
        def __init__(self, exc):
            self.exc, self.shut = exc, False

        def run(self, wait_ms):
            raise self.exc

        def shutdown(self, interrupted=False):
            self.shut = interrupted

    class Machine(FakeMachine):
        def __init__(self):
            FakeMachine.__init__(self)
            self.resets = 0

        def reset(self):
            self.resets += 1
    m = Machine()
    srv = Srv(OSError(12, "ENOMEM"))
    try:
        board_rt.run(srv, m, None, 0, 50)
        raise AssertionError("not raised")
    except OSError:
        pass
    assert m.resets == 1
    srv = Srv(KeyboardInterrupt())
    assert board_rt.run(srv, m, None, 0, 50) == 0 and srv.shut is True and m.resets == 1


def test_led_pin_names():
    m = FakeMachine()
    board_rt.make_led_pin(m, "25")
    board_rt.make_led_pin(m, "LED")
    assert m.made == [("pin", 25, 1), ("pin", "LED", 1)]
    assert board_rt.make_led_pin(m, None) is None and board_rt.make_led_pin(object(), "LED") is None
