"""The status LED: one blink pattern per state of the MTA, sans-IO.

    led = StatusLed(pin, state_fn)     pin: anything with value(v), or with on() and off()
    server.hooks.append(led.hook)      hook(now_ms), once per pass of the server's loop

state_fn() returns one of STATES (board_rt.mta_state(server) is the real one):

    idle      a 60 ms flash every 3 s          alive, nothing waiting
    pending   500 ms on, 500 ms off            mail in the queue
    error     two 100 ms flashes per second    a hop failing, or the last attempt of a message failed
    full      100 ms on, 100 ms off            the spool is nearly full (new mail will soon get 452)

A pattern is a list of durations in ms, alternately lit and dark, starting lit.  state_fn is asked
once per pattern cycle (so at most every 3 s it costs a look at the queue) and a pattern always
plays to its end, so a state that flickers between two passes never shows half a blink.  The
blinks need the loop to pass often enough: the board's main loop waits at most TICK_MS in poll.

This module must not know the server, the queue or the spool (state_fn does), nor read a clock
(now_ms comes in) or touch machine.Pin (the caller makes the pin).  A failing state_fn or pin
never raises out of hook(): the hook runs inside the server's loop, which must not stop.
"""
from tinymta import compat

PATTERNS = {
    "idle": (60, 2940),
    "pending": (500, 500),
    "error": (100, 150, 100, 650),
    "full": (100, 100),
    "off": (0, 1000),
}
STATES = ("idle", "pending", "error", "full", "off")
TICK_MS = 50        # the finest step in PATTERNS that must show: the loop's longest poll wait

log = compat.get_logger("led")


def level_at(pattern, t):
    """Whether the LED is lit t ms into a cycle of pattern (t is reduced modulo the cycle)."""
    t = t % sum(pattern)
    lit = True
    for d in pattern:
        if t < d:
            return lit
        t -= d
        lit = not lit
    return False


class StatusLed:
    def __init__(self, pin, state_fn, invert=False):
        self.pin = pin
        self.state_fn = state_fn
        self.invert = invert        # active-low LEDs (many ESP32 boards) light on 0
        self.state = None
        self.lit = None
        self.broken = False
        self._start = 0
        self._cycle = 0
        if hasattr(pin, "value"):
            self._write = self._write_value
        elif hasattr(pin, "on") and hasattr(pin, "off"):
            self._write = self._write_onoff
        else:
            raise ValueError("the LED pin needs value(v), or on() and off()")

    def _write_value(self, on):
        self.pin.value(1 if on != self.invert else 0)

    def _write_onoff(self, on):
        if on != self.invert:
            self.pin.on()
        else:
            self.pin.off()

    def _set(self, on):
        if on == self.lit or self.broken:
            return
        try:
            self._write(on)
            self.lit = on
        except Exception as e:      # a dead pin ends the LED, never the loop
            self.broken = True
            log.error("status LED disabled: %r", e)

    def _ask(self):
        try:
            s = self.state_fn()
        except Exception as e:      # state_fn reads live MTA state: a bug there shows as an error blink
            log.error("status LED state failed: %r", e)
            return "error"
        return s if s in PATTERNS else "error"

    def hook(self, now_ms):
        late = compat.ticks_diff(now_ms, self._start)
        if self.state is None or late >= self._cycle or late < 0:
            state = self._ask()
            if state == self.state and 0 <= late < 2 * self._cycle:
                # the same state goes on: keep the rhythm (a slow loop pass does not stretch it)
                self._start = compat.ticks_add(self._start, self._cycle)
            else:
                self._start = now_ms
            self.state = state
            self._cycle = sum(PATTERNS[state])
        self._set(level_at(PATTERNS[self.state], compat.ticks_diff(now_ms, self._start)))

    def off(self):
        """Dark for good (at shutdown); hook() lights it again."""
        self._set(False)
        self.state = None
