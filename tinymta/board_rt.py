"""What a MicroPython board's boot.py and main.py do, as functions the tests can drive.

    boot(path)          boot.py: join Wi-Fi (board.wifi_ssid) with a bounded wait, log the outcome
    main(path)          main.py: open the spool, build the MTA (mta.build), add the hooks, run
    open_spool(cfg)     the spool in a file (FileBlockDevice), on rp2.Flash or an esp32.Partition
    mta_state(server)   "idle" / "pending" / "error" / "full" for led.StatusLed

spool.path on a board (boards.spool_location writes it): a file, or "<partition>[@<offset>]"
    "/<path>"                    a spool file on the board's filesystem (the profiles' default,
                                 "/tinymta.spool"): FileBlockDevice, created at spool.size on first
                                 boot.  On littlefs a flush is an atomic commit, but a write into the
                                 middle of a file rewrites its tail, so it costs more wear and time
                                 than a partition.
    "flash" / "flash@<offset>"   on rp2: rp2.Flash(start=offset, len=spool.size) inside the flash
                                 storage area.  Refused while the filesystem mounted at / spans
                                 that area (stock firmware mounts littlefs over all of it: two
                                 owners of one flash would destroy both).
    "<label>"                    on ESP32: esp32.Partition.find(TYPE_DATA, label=<label>)
    anything else                a file too (the unix port's tests use relative names)

The config file is TINYMTA_CONFIG from the environment (the unix port's tests) or config.json in
the current directory (/ on a board).  Hardware modules (machine, network, rp2, esp32) are looked
up at call time and may be passed in, so the logic runs on CPython with stand-ins.

This module must not hold protocol, storage or delivery logic, nor know the blink patterns
(led.py); it only wires the board's hardware to the MTA.
"""
import sys

from tinymta import compat
from tinymta.netaddr import format_hostport

log = compat.get_logger("board")

WIFI_WAIT_MS = 8000         # boot waits this long for Wi-Fi, then goes on (mail is spooled anyway);
                            # under mpremote's 10 s wait for the REPL after a soft reset, which runs boot.py
WIFI_RETRY_MS = 30000       # a lost link is joined again this often
RP2_WDT_MAX_MS = 8388       # RP2040/RP2350 watchdog: 24 bits of microseconds
WDT_MARGIN_MS = 2500        # of a watchdog's timeout kept for the loop around one blocking wait
RP2_SECTOR = 4096


def _module(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def config_path(default="config.json"):
    getenv = getattr(__import__("os"), "getenv", None)     # boards' os has no getenv
    return (getenv and getenv("TINYMTA_CONFIG")) or default


def read_board_section(path):
    """board.* from the JSON config without validating the rest (boot needs only Wi-Fi); {} if unreadable."""
    import json
    try:
        d = json.loads(compat.read_file(path))
    except (OSError, ValueError) as e:
        log.warning("%s: cannot read the board section: %s", path, e)
        return {}
    b = d.get("board") if isinstance(d, dict) else None
    return b if isinstance(b, dict) else {}


# --- Wi-Fi ------------------------------------------------------------------------------------

def _status_text(network, st):
    for name in ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL", "STAT_CONNECTING",
                 "STAT_IDLE", "STAT_GOT_IP"):
        if getattr(network, name, None) == st:
            return name[5:].lower().replace("_", " ")
    return "status %s" % st


def wifi_connect(network, ssid, password, wait_ms=WIFI_WAIT_MS, sleep_ms=None, ticks_ms=None):
    """Join ssid as a station; wait at most wait_ms.  The WLAN object, connected or not."""
    sleep_ms = sleep_ms or compat.sleep_ms
    ticks_ms = ticks_ms or compat.ticks_ms
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    try:    # the CYW43's power saving delays inbound packets by up to 100s of ms: bad for a server
        wlan.config(pm=network.WLAN.PM_NONE)
    except (AttributeError, ValueError, TypeError, OSError):
        pass
    if wlan.isconnected():
        log.info("wifi: already connected, address %s", wlan.ifconfig()[0])
        return wlan
    log.info("wifi: joining %s", ssid)
    wlan.connect(ssid, password or "")
    start = ticks_ms()
    fatal = [getattr(network, n, None) for n in ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL")]
    while not wlan.isconnected():
        st = wlan.status()
        if st in fatal and st is not None:
            log.error("wifi: %s: %s; the MTA starts without a network", ssid, _status_text(network, st))
            return wlan
        if compat.ticks_diff(ticks_ms(), start) >= wait_ms:
            log.warning("wifi: %s: not connected after %d ms (%s); going on, it retries every %d s",
                        ssid, wait_ms, _status_text(network, st), WIFI_RETRY_MS // 1000)
            return wlan
        sleep_ms(100)
    log.info("wifi: connected to %s, address %s", ssid, wlan.ifconfig()[0])
    return wlan


class WifiWatch:
    """A loop hook that joins the network again when the link was lost (checked every retry_ms)."""

    def __init__(self, wlan, ssid, password, retry_ms=WIFI_RETRY_MS):
        self.wlan, self.ssid, self.password, self.retry_ms = wlan, ssid, password, retry_ms
        self._last = None
        self.was_up = wlan.isconnected()

    def hook(self, now_ms):
        if self._last is not None and compat.ticks_diff(now_ms, self._last) < self.retry_ms:
            return
        self._last = now_ms
        try:
            up = self.wlan.isconnected()
            if up and not self.was_up:
                log.info("wifi: connected, address %s", self.wlan.ifconfig()[0])
            elif not up:
                if self.was_up:
                    log.warning("wifi: link to %s lost; joining again", self.ssid)
                self.wlan.connect(self.ssid, self.password or "")
            self.was_up = up
        except OSError as e:        # the radio driver can refuse while busy: next round
            log.warning("wifi: %s", e)


def boot(path=None, network=None):
    """boot.py: Wi-Fi when the config names a network and the firmware has one."""
    path = path or config_path()
    network = network or _module("network")
    b = read_board_section(path)
    if not b.get("wifi_ssid"):
        log.info("wifi: no board.wifi_ssid in %s: not joining a network", path)
        return None
    if network is None or not hasattr(network, "WLAN"):
        log.info("wifi: this firmware has no network.WLAN: skipped")
        return None
    return wifi_connect(network, b["wifi_ssid"], b.get("wifi_password"))


# --- the spool ----------------------------------------------------------------------------------

def _startup_error(msg):
    from tinymta.mta import StartupError
    return StartupError(msg)


def split_spool_path(path):
    """"flash@344064" -> ("flash", 344064); "spool" -> ("spool", 0); ValueError for a bad offset."""
    name, sep, off = path.partition("@")
    if not sep:
        return path, 0
    if not off.isdigit():
        raise ValueError("spool.path %s: the offset after @ must be a number of bytes" % path)
    return name, int(off)


def _rp2_flash(rp2, os, sc, start):
    whole = rp2.Flash()                                    # the storage area (littlefs at / by default)
    total = whole.ioctl(4, 0) * whole.ioctl(5, 0)
    if sc.sector_size != RP2_SECTOR:
        raise _startup_error("spool.path %s: rp2 flash sectors are %d bytes, spool.sector_size is %d"
                             % (sc.path, RP2_SECTOR, sc.sector_size))
    if start % RP2_SECTOR or start + sc.size > total:
        raise _startup_error("spool.path %s: %d bytes at offset %d do not fit the %d-byte flash storage "
                             "area in whole %d-byte sectors" % (sc.path, sc.size, start, total, RP2_SECTOR))
    try:
        st = os.statvfs("/")
        fs_bytes = st[0] * st[2]
    except (OSError, AttributeError):
        fs_bytes = 0
    if fs_bytes > start:
        raise _startup_error("spool.path %s: the filesystem at / spans %d bytes of the flash storage area, "
                             "over the spool at offset %d (it needs firmware that mounts a smaller "
                             "filesystem, or a spool file: spool.path = \"/tinymta.spool\")"
                             % (sc.path, fs_bytes, start))
    return rp2.Flash(start=start, len=sc.size)


def _esp32_partition(esp32, sc, name, offset):
    P = esp32.Partition
    found = P.find(P.TYPE_DATA, label=name, block_size=sc.sector_size)
    if not found:
        return None
    if offset:
        raise _startup_error("spool.path %s: an ESP32 partition is used whole (no @offset)" % sc.path)
    part = found[0]
    have = part.ioctl(4, 0) * part.ioctl(5, 0)
    if have != sc.size:
        raise _startup_error("spool.path %s: the partition holds %d bytes but spool.size is %d"
                             % (sc.path, have, sc.size))
    return part


def open_spool_device(cfg, rp2=None, esp32=None, os=None):
    """The flash partition spool.path names on this hardware, or None for a spool file."""
    if cfg.spool.path.startswith("/"):
        return None                                        # a file: no partition lookups
    try:
        name, offset = split_spool_path(cfg.spool.path)
    except ValueError as e:
        raise _startup_error(str(e))
    rp2 = rp2 or _module("rp2")
    if name == "flash" and rp2 is not None and hasattr(rp2, "Flash"):
        return _rp2_flash(rp2, os or __import__("os"), cfg.spool, offset)
    esp32 = esp32 or _module("esp32")
    if esp32 is not None and hasattr(esp32, "Partition"):
        dev = _esp32_partition(esp32, cfg.spool, name, offset)
        if dev is not None:
            return dev
    hardware = (rp2 is not None and hasattr(rp2, "Flash")) or (esp32 is not None and hasattr(esp32, "Partition"))
    if "@" in cfg.spool.path or hardware:   # on a board a name is a partition: never silently a file
        raise _startup_error("spool.path %s: no flash partition \"%s\" on this hardware (a spool file"
                             " needs an absolute path, like \"/tinymta.spool\")" % (cfg.spool.path, name))
    return None                             # the unix port: a file in the current directory


def open_spool(cfg, **modules):
    """The Spool for cfg on its device (formatted when blank); StartupError saying why not."""
    from tinymta import mta
    dev = open_spool_device(cfg, **modules)
    if dev is None:
        return mta.open_spool(cfg)                         # a file: the same path as on Linux
    from tinymta.spool import Spool
    from tinymta.spoolfmt import SpoolError
    try:
        return Spool(dev, prog_unit=cfg.spool.prog_unit)
    except SpoolError as e:
        raise _startup_error("spool %s: %s" % (cfg.spool.path, e))


# --- state for the LED ----------------------------------------------------------------------------

def spool_nearly_full(spool):
    """Past 80% of what the spool admits (it refuses new mail beyond max_fill of its capacity)."""
    st = spool.stats()
    return st["used"] * 5 >= st["capacity"] * getattr(spool, "max_fill", 0.75) * 4


def mta_state(server):
    spool = getattr(server, "spool", None)
    if spool is not None and spool_nearly_full(spool):
        return "full"
    relay = getattr(server, "relay", None)
    q = getattr(relay, "queue", None)
    if q is None:
        return "idle"
    for h in q.hops.values():                  # [last success, last failure, error]: failing now
        if h[1] is not None and (h[0] is None or h[1] > h[0]):
            return "error"
    for e in q.entries.values():
        if e.last_error is not None and not e.held:
            return "error"                     # its last attempt failed
    return "pending" if len(q) else "idle"


# --- watchdog and LED hardware -----------------------------------------------------------------

def watch_over(srv, machine, timeout_ms, platform=None):
    """Start the watchdog (or None): fed once per loop pass, and before every blocking DNS query
    or TLS handshake, whose waits are capped to stay well inside its timeout (compat.blocking),
    so a slow server fails a delivery instead of resetting the board again and again."""
    wdt = make_watchdog(machine, timeout_ms, platform)
    if wdt is not None:
        srv.hooks.append(lambda now_ms: wdt.feed())
        # min(): the rp2 clamp is the strictest; elsewhere the cap is only safer for it
        compat.set_blocking_guard(wdt.feed, max(1000, min(timeout_ms, RP2_WDT_MAX_MS) - WDT_MARGIN_MS))
    return wdt


def make_watchdog(machine, timeout_ms, platform=None):
    """machine.WDT(timeout=...) clamped to what the chip allows; None where there is none."""
    if not timeout_ms or machine is None or not hasattr(machine, "WDT"):
        return None
    if (platform or sys.platform) == "rp2" and timeout_ms > RP2_WDT_MAX_MS:
        log.warning("watchdog: %d ms is past the rp2 limit; using %d ms", timeout_ms, RP2_WDT_MAX_MS)
        timeout_ms = RP2_WDT_MAX_MS
    return machine.WDT(timeout=timeout_ms)


def keep_fed(machine, wdt, timeout_ms):
    """After the MTA stopped (Ctrl-C from a console or mpremote): the watchdog cannot be stopped on
    rp2 or ESP32, so a timer feeds it and the REPL stays usable.  The timer object, or None."""
    if wdt is None or not hasattr(machine, "Timer"):
        return None
    T = machine.Timer
    try:
        t = T(-1)                      # rp2: a virtual timer
    except (ValueError, OSError):
        t = T(0)                       # ESP32: hardware timer 0
    t.init(period=max(100, timeout_ms // 3), mode=T.PERIODIC, callback=lambda _t: wdt.feed())
    log.info("watchdog: fed by a timer while the MTA is stopped")
    return t


def make_led_pin(machine, name):
    """machine.Pin for board.led ("LED", "25", "2"), or None when the firmware has no Pin."""
    if not name or machine is None or not hasattr(machine, "Pin"):
        return None
    return machine.Pin(int(name) if name.isdigit() else name, machine.Pin.OUT)


# --- main.py -------------------------------------------------------------------------------------

def main(path=None, machine=None, network=None):
    """Run the MTA as main.py does; returns an exit status (2: a startup error, said in one line)."""
    from tinymta import mta
    from tinymta.config import load, ConfigError
    from tinymta.led import StatusLed, TICK_MS
    path = path or config_path()
    try:
        cfg = load(path)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    compat.set_log_level(cfg.log.level)
    machine = machine or _module("machine")
    spool = None
    try:
        spool = open_spool(cfg)
        srv = mta.build(cfg, spool=spool)
    except mta.StartupError as e:
        log.error("%s", e)
        if spool is not None:
            spool.close()
        return 2
    led = None
    pin = make_led_pin(machine, cfg.board.led)
    if pin is not None:
        led = StatusLed(pin, lambda: mta_state(srv))
        srv.hooks.append(led.hook)
    network = network or _module("network")
    b = cfg.board
    if b.wifi_ssid and network is not None and hasattr(network, "WLAN"):
        srv.hooks.append(WifiWatch(network.WLAN(network.STA_IF), b.wifi_ssid, b.wifi_password).hook)
    wdt = watch_over(srv, machine, b.watchdog_ms)     # last: started once everything else is up
    log.info("tinymta ready: listening on %s, spool %s (%d messages)%s%s",
             " ".join([format_hostport(a) for a in cfg.server.listen]), cfg.spool.path, len(srv.spool),
             ", LED %s" % b.led if led else "", ", watchdog %d ms" % b.watchdog_ms if wdt else "")
    sys.stdout.write("READY\n")        # the readiness line tests and supervisors wait for
    try:
        sys.stdout.flush()
    except AttributeError:
        pass
    try:
        return run(srv, machine, wdt, b.watchdog_ms, TICK_MS if led else 1000)
    finally:
        if led is not None:
            led.off()


def run(srv, machine, wdt, watchdog_ms, wait_ms):
    """The loop until Ctrl-C (0: the REPL is the person's, the watchdog fed by a timer).  Anything
    else that escapes the loop resets the board: a board has nobody to read a traceback, and
    everything acknowledged is in the spool, which survives the reset like a power cut."""
    try:
        srv.run(wait_ms)
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
        srv.shutdown(True)
        keep_fed(machine, wdt, watchdog_ms)
        return 0
    except Exception as e:
        log.error("the loop failed: %r; resetting the board", e)
        if machine is not None and hasattr(machine, "reset"):
            machine.reset()
        raise                       # the unix port (no machine.reset): the caller sees it
    return 0
