"""Block devices that speak MicroPython's extended block-device protocol.

``readblocks(n, buf, offset)``, ``writeblocks(n, buf, offset)`` (programs, never
erases), ``ioctl(3)`` sync, ``ioctl(4)`` block count, ``ioctl(5)`` block size,
``ioctl(6, n)`` erase block n.  The spool talks to ``rp2.Flash`` and
``esp32.Partition`` on boards through the same calls.

- ``FileBlockDevice``: a preallocated file (or raw partition) on Linux; pwrite +
  fdatasync on CPython, seek/write/flush on MicroPython.  Erase is a no-op
  (files overwrite in place; the spool format rejects stale bytes by itself),
  so ``needs_erase`` is False.
(The RAM flash simulator the tests cut power on is tinymta/flashsim.py: boards never load it.)

This module must not know the spool format: it moves bytes, nothing else.
"""
import os

from tinymta import compat

IOCTL_INIT = 1
IOCTL_DEINIT = 2
IOCTL_SYNC = 3
IOCTL_BLOCK_COUNT = 4
IOCTL_BLOCK_SIZE = 5
IOCTL_BLOCK_ERASE = 6


class BlockDeviceError(Exception):
    """A device that cannot be used as asked (wrong size, misuse); the message says why."""


class FileBlockDevice:
    """A fixed-size file of ``block_size`` blocks, created filled with 0xFF (erased NOR)."""

    needs_erase = False

    def __init__(self, path, size=None, block_size=65536, prog_unit=4096, create=True, readonly=False):
        self.path = path
        self.readonly = readonly
        self.block_size = block_size
        self.prog_unit = prog_unit
        self.bytes_written = 0
        self.syncs = 0
        have = compat.file_size(path)
        if have < 0:
            if not create or size is None:
                raise BlockDeviceError("%s: no such spool file" % path)
            self._create(path, size, block_size)
            have = size
        if size is not None and have != size:
            raise BlockDeviceError("%s: file is %d bytes but the spool size is %d; refusing to use it "
                                   "(move it away to start a new spool)" % (path, have, size))
        if have == 0 or have % block_size:
            raise BlockDeviceError("%s: file is %d bytes, not a whole number of %d-byte sectors "
                                   "(truncated, or not a spool)" % (path, have, block_size))
        self.size = have
        self.nblocks = have // block_size
        if compat.MICROPYTHON:
            self._f = open(path, "rb" if readonly else "r+b")
            self._fd = None
        else:
            self._f = None
            self._fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)

    @staticmethod
    def probe(path):
        """The sector size of an existing spool file, from the first valid sector header found."""
        from tinymta import spoolfmt as fmt
        size = compat.file_size(path)
        if size < 0:
            raise BlockDeviceError("%s: no such file" % path)
        with open(path, "rb") as f:
            step = 512
            block = bytearray(65536)
            base = 0
            while base < size:
                n = f.readinto(block)
                if not n:
                    break
                for off in range(0, n - fmt.SECTOR_HDR + 1, step):
                    if block[off:off + 4] == fmt.MAGIC:
                        h = fmt.parse_sector_header(block[off:off + fmt.SECTOR_HDR])
                        if h is not None and (base + off) % (1 << h.log2_sector) == 0:
                            return 1 << h.log2_sector, 1 << h.log2_unit
                base += n
        raise BlockDeviceError("%s: no tinymta spool here (no valid sector header in %d bytes)" % (path, size))

    @staticmethod
    def _create(path, size, block_size):
        if size <= 0 or size % block_size:
            raise BlockDeviceError("%s: spool size %d is not a positive multiple of the sector size %d"
                                   % (path, size, block_size))
        # Write real bytes once: fallocate's unwritten extents would make every
        # first overwrite a journal commit.
        tmp = path + ".new"
        ff = b"\xff" * min(block_size, 65536)
        with open(tmp, "wb") as f:
            left = size
            while left:
                n = min(left, len(ff))
                f.write(ff[:n] if n < len(ff) else ff)
                left -= n
            compat.fsync_file(f)
        os.rename(tmp, path)
        if not compat.MICROPYTHON:
            d = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(d)
            finally:
                os.close(d)

    def _check(self, n, length, off):
        start = n * self.block_size + off
        if n < 0 or off < 0 or start + length > self.size:
            raise BlockDeviceError("access beyond the end of %s (block %d offset %d length %d)"
                                   % (self.path, n, off, length))
        return start

    def readblocks(self, n, buf, off=0):
        start = self._check(n, len(buf), off)
        if self._fd is not None:
            got = os.preadv(self._fd, [buf], start)
        else:
            self._f.seek(start)
            got = self._f.readinto(buf)
        if got != len(buf):
            raise OSError(compat.EIO, "short read from %s" % self.path)

    def writeblocks(self, n, buf, off=None):
        if self.readonly:
            raise BlockDeviceError("%s is open read-only" % self.path)
        if off is None:  # simple form: whole blocks (a file needs no erase first)
            off = 0
        start = self._check(n, len(buf), off)
        if self._fd is not None:
            done = os.pwrite(self._fd, buf, start)
        else:
            self._f.seek(start)
            done = self._f.write(buf)
        if done != len(buf):
            raise OSError(compat.EIO, "short write to %s" % self.path)
        self.bytes_written += len(buf)

    def ioctl(self, op, arg=None):
        if op == IOCTL_BLOCK_COUNT:
            return self.nblocks
        if op == IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == IOCTL_SYNC:
            if self.readonly:
                return 0
            self.syncs += 1
            if self._fd is not None:
                os.fdatasync(self._fd)
            else:
                compat.fsync_file(self._f)
            return 0
        if op == IOCTL_DEINIT:
            self.close()
            return 0
        if op in (IOCTL_INIT, IOCTL_BLOCK_ERASE):
            return 0
        return None

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._f is not None:
            self._f.close()
            self._f = None
