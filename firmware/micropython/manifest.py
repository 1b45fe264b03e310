# Freezes tinymta and the shims under lib/ into a MicroPython firmware image, with the port's own
# modules, so the bytecode runs from flash instead of RAM (about a third less heap, no .mpy files
# on the filesystem).  Build from a MicroPython checkout (1.23+), for example:
#
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=/path/to/tinymta/firmware/micropython/manifest.py
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/tinymta/firmware/micropython/manifest.py
#
# boot.py, main.py and config.json stay on the board's filesystem (`tinymta flash` copies them).
# Frozen modules win: such firmware has sys.path ['', '.frozen', '/lib'], so a tinymta or shim
# under /lib is never imported, and updating tinymta means building new firmware.  `tinymta flash`
# still copies lib/ and then warns that the board runs its frozen tinymta.
# Paths are relative to this file (makemanifest runs it with this directory as the current one;
# it defines no __file__).  HOST_ONLY must match tinymta/flash.py (tests/test_flash.py
# checks): the CPython command line and host tools that a board never imports.
import os

include("$(PORT_DIR)/boards/manifest.py")

metadata(description="tinymta: an embedded SMTP mail transfer agent", version="0.1.0")

HOST_ONLY = ("__main__.py", "boards.py", "cli.py", "ctl.py", "ctlsock.py", "deploy.py", "flash.py", "flashsim.py",
             "install.py", "installfs.py", "sendmail.py", "spooltool.py")
_HERE = os.getcwd()
_PKG = os.path.join(_HERE, "..", "..", "tinymta")

package("tinymta", files=sorted(n for n in os.listdir(_PKG) if n.endswith(".py") and n not in HOST_ONLY),
        base_path="../..")

# The shims stand in for the CPython packages tinymta imports by their own names (dns, serial).
_LIB = os.path.join(_HERE, "lib")
for _n in sorted(os.listdir(_LIB)):
    if os.path.isdir(os.path.join(_LIB, _n)) and os.path.exists(os.path.join(_LIB, _n, "__init__.py")):
        package(_n, base_path="lib")
    elif _n.endswith(".py"):
        module(_n, base_path="lib")
