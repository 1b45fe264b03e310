"""The boards' serial shim (firmware/micropython/lib/serial.py) against the real pyserial.

One script, run twice on the device end of a socat pty pair: under CPython it imports
pyserial, under the MicroPython unix port the shim (MICROPYPATH=firmware/micropython/lib).
The host end sends the same bytes (all 256 values) to both and the transcripts must be equal:
a non-blocking read with nothing waiting, the data 8-bit clean, what the device writes back,
and a SerialException when the device goes away.
"""
import json
import os
import subprocess
import sys

import pytest

from mtaproc import MICROPYTHON, ROOT
from relaykit import wait_for
from test_console_serial import Pty

serial = pytest.importorskip("serial")

SCRIPT = r'''
import sys, time, serial
s = serial.Serial(sys.argv[1], 115200, timeout=0)
out = {"empty": list(s.read(16))}
s.write(b"READY\n")
got = b""
for _ in range(1000):                       # at most about 10 s
    got += s.read(600 - len(got))
    if len(got) >= 512:
        break
    time.sleep(0.01)
out["data"] = list(got)
s.write(bytes(range(256)))
s.write(b"END\n")
gone = "no"
for _ in range(1000):
    try:
        s.read(64)
    except serial.SerialException:
        gone = "SerialException"
        break
    except Exception as e:
        gone = "other: %r" % e
        break
    time.sleep(0.01)
out["gone"] = gone
print(JSON(out))
'''


def run_device(tmp_path, runtime, tag):
    pty = Pty(tmp_path, tag).start()
    script = tmp_path / ("dev_%s.py" % runtime)
    script.write_text("import json\nJSON = json.dumps\n" + SCRIPT)
    if runtime == "micropython":
        cmd = [MICROPYTHON, str(script), pty.dev]
        env = dict(os.environ, MICROPYPATH=os.path.join(ROOT, "firmware", "micropython", "lib") + ":.frozen")
    else:
        cmd = [sys.executable, str(script), pty.dev]
        env = dict(os.environ)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        host = serial.Serial(pty.host, 115200, timeout=0.05)
        got = bytearray()
        wait_for(lambda: got.extend(host.read(64)) or b"READY\n" in got, 10, "READY from the device")
        host.write(bytes(range(256)) * 2)
        back = bytearray()
        wait_for(lambda: back.extend(host.read(4096)) or back.endswith(b"END\n"), 10, "the device's answer")
        host.close()
        pty.stop()                                  # the device vanishes under the script
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pty.stop()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["back"] = list(bytes(back[:-4]))
    return result


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="MicroPython unix port not installed")
def test_shim_and_pyserial_agree_on_the_same_inputs(tmp_path):
    real = run_device(tmp_path, "cpython", "real")
    shim = run_device(tmp_path, "micropython", "shim")
    assert real["empty"] == [] and real["data"] == list(range(256)) * 2 and real["back"] == list(range(256))
    assert real["gone"] == "SerialException"
    assert shim == real


def test_shim_names_and_errors_under_micropython(tmp_path):
    if not os.path.exists(MICROPYTHON):
        pytest.skip("MicroPython unix port not installed")
    code = ("import serial\n"
            "for port in ('/nonexistent/tty', 'uart0'):\n"
            "    try:\n"
            "        serial.Serial(port, 9600, timeout=0)\n"
            "        print('opened', port)\n"
            "    except serial.SerialException as e:\n"
            "        print('refused', port, isinstance(e, OSError))\n")
    env = dict(os.environ, MICROPYPATH=os.path.join(ROOT, "firmware", "micropython", "lib") + ":.frozen")
    p = subprocess.run([MICROPYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=20)
    # the unix port has no machine.UART: "uart0" is refused as clearly as a missing device
    assert p.stdout.split("\n")[:2] == ["refused /nonexistent/tty True", "refused uart0 True"], p.stdout + p.stderr
