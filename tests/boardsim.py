"""An emulated MicroPython board for deploy tests: the unix port with a littlefs2 flash.

    socat pty,link=/tmp/ttyX,raw,echo=0 EXEC:'micropython -i tests/boardsim.py IMAGE [BLOCKS]',pty,raw,echo=0

IMAGE is a file of 4096-byte blocks holding a littlefs2 filesystem (made here when the file does
not exist: BLOCKS blocks, default 512 = 2 MiB).  It is mounted at /flash through a block device
that reads and writes the file in place, /flash becomes the current directory (a board's root:
`mpremote ... cp x :x` lands in /flash/x) and /flash/lib joins sys.path as /lib does on a board;
`-i` then leaves the REPL on the pty for mpremote, which must `resume` (a soft reset ends the unix
port).  `vfs.umount('/flash')` before the image is read on the host (littlefs-python).

It runs under MicroPython only and must not import tinymta: it is the hardware, not the software.
"""
import os
import sys
import vfs

BLOCK = 4096


class FileFlash:
    """Extended block-device protocol over a file.  Reads and writes go straight to the file, with
    no allocation (a GC finaliser may call in with the heap locked)."""

    def __init__(self, path, blocks):
        self.f = open(path, "r+b")
        self.blocks = blocks
        self.ff = b"\xff" * BLOCK

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:                 # the simple form erases first
            off = 0
            for i in range(len(buf) // BLOCK):
                self.ioctl(6, n + i)
        self.f.seek(n * BLOCK + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BLOCK
        if op == 6:
            self.f.seek(arg * BLOCK)
            self.f.write(self.ff)
            return 0
        if op == 3:
            self.f.flush()
            return 0
        return 0


def _start(path, blocks):
    try:
        size = os.stat(path)[6]
        fresh = False
    except OSError:
        with open(path, "wb") as f:
            ff = b"\xff" * BLOCK
            for _ in range(blocks):
                f.write(ff)
        size = blocks * BLOCK
        fresh = True
    dev = FileFlash(path, size // BLOCK)
    if fresh:
        vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
    os.chdir("/flash")
    sys.path.append("/flash/lib")
    return dev


_dev = _start(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 512)
print("boardsim: %s mounted at /flash" % sys.argv[1])
