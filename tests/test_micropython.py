"""Run every dual-runtime test module (tests/both/test_*.py) under the MicroPython unix port.

pytest already runs those modules on CPython; this file runs each of them again
with ``micropython tests/mp_runner.py MODULE`` and fails when any test fails there.
It is skipped only where the MicroPython unix port cannot be installed (its wheel
exists for x86-64 Linux only); .ci/run installs it.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTH = os.path.join(ROOT, "tests", "both")
MICROPYTHON = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")
MODULES = sorted(f[:-3] for f in os.listdir(BOTH) if f.startswith("test_") and f.endswith(".py"))


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="MicroPython unix port not installed")
@pytest.mark.parametrize("module", MODULES)
def test_module_under_micropython(module):
    env = dict(os.environ, MICROPYPATH=ROOT + ":" + BOTH + ":.frozen")
    proc = subprocess.run([MICROPYTHON, "-X", "heapsize=8M", os.path.join(ROOT, "tests", "mp_runner.py"), module],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    assert proc.returncode == 0 and tail[0].endswith(" 0 failed"), proc.stdout[-6000:] + proc.stderr[-3000:]
    print(tail[0])
