"""The status LED (tinymta/led.py) with stand-in pins and clocks: patterns, rhythm, failures, inverted
pins.  The board runtime around it is tests/both/test_board_rt.py.  Both runtimes (tests/mp_runner.py
runs it under MicroPython)."""
from tinymta.led import PATTERNS, StatusLed, level_at


class Pin:
    """machine.Pin's value(v); records (time, level) of each write."""

    def __init__(self, clock):
        self.clock = clock
        self.writes = []

    def value(self, v):
        self.writes.append((self.clock[0], v))


class OnOffPin:
    def __init__(self):
        self.level = None
        self.calls = 0

    def on(self):
        self.level = 1
        self.calls += 1

    def off(self):
        self.level = 0
        self.calls += 1


def _drive(led, clock, start, end, step=10):
    t = start
    while t < end:
        clock[0] = t
        led.hook(t)
        t += step


def _lit_spans(writes, end):
    """[(on_at, off_at)] from a pin's writes."""
    spans, on = [], None
    for t, v in writes:
        if v and on is None:
            on = t
        elif not v and on is not None:
            spans.append((on, t))
            on = None
    if on is not None:
        spans.append((on, end))
    return spans


def _run(state, ms, step=10):
    clock = [0]
    pin = Pin(clock)
    led = StatusLed(pin, lambda: state)
    _drive(led, clock, 1000, 1000 + ms, step)
    return _lit_spans(pin.writes, 1000 + ms), pin


def test_level_at_walks_the_pattern():
    assert level_at((60, 2940), 0) and level_at((60, 2940), 59) and not level_at((60, 2940), 60)
    assert level_at((60, 2940), 3000) and not level_at((60, 2940), 2999)
    p = (100, 150, 100, 650)
    assert [level_at(p, t) for t in (0, 99, 100, 249, 250, 349, 350, 999)] == \
        [True, True, False, False, True, True, False, False]
    assert not level_at(PATTERNS["off"], 0)


def test_idle_is_a_short_flash_every_three_seconds():
    spans, pin = _run("idle", 9000)
    assert spans == [(1000, 1060), (4000, 4060), (7000, 7060)]
    assert len(pin.writes) == 6             # the pin is written only when the level changes


def test_pending_blinks_slowly_error_twice_full_fast():
    spans, _ = _run("pending", 3000)
    assert spans == [(1000, 1500), (2000, 2500), (3000, 3500)]
    spans, _ = _run("error", 2000)
    assert spans == [(1000, 1100), (1250, 1350), (2000, 2100), (2250, 2350)]
    spans, _ = _run("full", 600)
    assert spans == [(1000, 1100), (1200, 1300), (1400, 1500)]


def test_state_is_asked_once_a_cycle_and_a_pattern_plays_to_its_end():
    clock = [0]
    pin = Pin(clock)
    state = ["idle"]
    asked = [0]

    def fn():
        asked[0] += 1
        return state[0]
    led = StatusLed(pin, fn)
    _drive(led, clock, 0, 1000)
    state[0] = "pending"                    # mail arrives during the idle cycle's dark part
    _drive(led, clock, 1000, 3000)
    assert _lit_spans(pin.writes, 3000) == [(0, 60)]       # idle finished its 3 s first
    assert asked[0] == 1
    _drive(led, clock, 3000, 5000)
    assert _lit_spans(pin.writes, 5000) == [(0, 60), (3000, 3500), (4000, 4500)]
    assert asked[0] == 3


def test_a_slow_loop_pass_keeps_the_rhythm():
    clock = [0]
    pin = Pin(clock)
    led = StatusLed(pin, lambda: "pending")
    for t in (0, 600, 1030, 1600, 2010, 2520):     # irregular passes, one 430 ms apart
        clock[0] = t
        led.hook(t)
    assert pin.writes == [(0, 1), (600, 0), (1030, 1), (1600, 0), (2010, 1), (2520, 0)]
    assert led._start == 2000                        # cycles stay on the 1 s grid


def test_failures_never_leave_the_hook():
    clock = [0]
    pin = Pin(clock)

    def broken():
        raise KeyError("no queue yet")
    led = StatusLed(pin, broken)
    _drive(led, clock, 0, 1000)
    assert led.state == "error" and _lit_spans(pin.writes, 1000) == [(0, 100), (250, 350)]
    led2 = StatusLed(pin, lambda: "something else")
    led2.hook(0)
    assert led2.state == "error"

    class DeadPin:
        def value(self, v):
            raise OSError(5)
    led3 = StatusLed(DeadPin(), lambda: "idle")
    led3.hook(0)
    led3.hook(5000)
    assert led3.broken


def test_on_off_pins_inverted_leds_and_off():
    p = OnOffPin()
    led = StatusLed(p, lambda: "pending", invert=True)
    led.hook(0)
    assert p.level == 0                     # lit: an active-low LED's pin goes low
    led.hook(600)
    assert p.level == 1
    led.hook(1000)
    assert p.level == 0
    led.off()
    assert p.level == 1 and led.state is None
    try:
        StatusLed(object(), lambda: "idle")
        assert False, "a pin without value/on/off was accepted"
    except ValueError:
        pass
