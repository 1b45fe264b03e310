"""Block devices that speak MicroPython's extended block-device protocol.

``readblocks(n, buf, offset)``, ``writeblocks(n, buf, offset)`` (programs, never
erases), ``ioctl(3)`` sync, ``ioctl(4)`` block count, ``ioctl(5)`` block size,
``ioctl(6, n)`` erase block n.  The spool talks to ``rp2.Flash`` and
``esp32.Partition`` on boards through the same calls.

- ``FileBlockDevice``: a preallocated file (or raw partition) on Linux; pwrite +
  fdatasync on CPython, seek/write/flush on MicroPython.  Erase is a no-op
  (files overwrite in place; the spool format rejects stale bytes by itself),
  so ``needs_erase`` is False.
- ``FlashSim``: RAM NOR flash for tests.  It enforces erase-before-program and
  program-unit alignment, counts erases per block, and can cut power after the
  Nth program/erase with a chosen fault (see FAULTS).

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


class PowerLoss(Exception):
    """Raised by FlashSim when its power-cut budget runs out."""


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


# FlashSim fault models for the operation during which power is cut.
#   after: the op completes, then the cut
#   lost:  the op has no effect
#   torn:  program: only a random prefix lands; erase: only a random prefix is erased
#   bits:  program: each bit meant to go 1->0 clears with p=1/2 (never 0->1);
#          erase: each byte becomes 0xFF, stays old, or becomes old|random (interrupted erase)
FAULTS = ("after", "lost", "torn", "bits")


class FlashSim:
    """RAM NOR flash with erase-before-program checks, wear counters and power cuts."""

    needs_erase = True

    def __init__(self, nblocks, block_size=4096, prog_unit=256, seed=1):
        self.nblocks = nblocks
        self.block_size = block_size
        self.prog_unit = prog_unit
        self.mem = bytearray(nblocks * block_size)
        self._ff = b"\xff" * block_size
        for b in range(nblocks):
            self.mem[b * block_size:(b + 1) * block_size] = self._ff
        self.erase_counts = [0] * nblocks
        self.ops = 0            # programs + erases since creation
        self.bytes_programmed = 0
        self.budget = None      # ops left until the power cut; None = never
        self.fault = "after"
        self.dead = False
        self.bad = set()        # blocks whose programs silently do not stick (a worn-out sector)
        self._rng = seed * 2654435761 % 4294967296 or 1

    def rand(self, n):
        """Deterministic xorshift32 in [0, n), identical on every runtime."""
        x = self._rng
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rng = x
        return x % n

    def arm(self, budget, fault="after"):
        if fault not in FAULTS:
            raise ValueError("unknown fault model %r" % (fault,))
        self.budget = budget
        self.fault = fault

    def power_on(self):
        """Come back after a cut: the memory stays as the cut left it."""
        self.dead = False
        self.budget = None

    def copy(self):
        other = FlashSim(self.nblocks, self.block_size, self.prog_unit)
        other.mem[:] = self.mem
        other.erase_counts = list(self.erase_counts)
        other._rng = self._rng
        return other

    def _alive(self):
        if self.dead:
            raise PowerLoss("device is powered off")

    def readblocks(self, n, buf, off=0):
        self._alive()
        a = n * self.block_size + off
        if n < 0 or off < 0 or a + len(buf) > len(self.mem):
            raise BlockDeviceError("read beyond the end of the flash")
        buf[:] = self.mem[a:a + len(buf)]

    def writeblocks(self, n, buf, off=None):
        self._alive()
        if off is None:  # simple form: erase the blocks, then program them
            for i in range(len(buf) // self.block_size):
                self.ioctl(IOCTL_BLOCK_ERASE, n + i)
            off = 0
        p = self.prog_unit
        a = n * self.block_size + off
        if off % p or len(buf) % p:
            raise BlockDeviceError("program at block %d offset %d length %d is not aligned to the %d-byte "
                                   "program unit" % (n, off, len(buf), p))
        if a + len(buf) > len(self.mem) or off + len(buf) > self.block_size:
            raise BlockDeviceError("program crosses the end of block %d" % n)
        if self.mem[a:a + len(buf)] != self._ff[:len(buf)]:
            raise BlockDeviceError("program at block %d offset %d targets bytes that are not erased" % (n, off))
        if self._tick():
            self._cut_program(a, buf)
            raise PowerLoss("power cut during program")
        if n not in self.bad:
            self.mem[a:a + len(buf)] = buf
        self.bytes_programmed += len(buf)

    def _erase(self, n):
        a = n * self.block_size
        if self._tick():
            self._cut_erase(a)
            raise PowerLoss("power cut during erase")
        self.mem[a:a + self.block_size] = self._ff
        self.erase_counts[n] += 1

    def ioctl(self, op, arg=None):
        if op == IOCTL_BLOCK_COUNT:
            return self.nblocks
        if op == IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == IOCTL_BLOCK_ERASE:
            self._alive()
            if arg is None or arg < 0 or arg >= self.nblocks:
                raise BlockDeviceError("erase of block %r out of range" % (arg,))
            self._erase(arg)
            return 0
        if op in (IOCTL_INIT, IOCTL_DEINIT, IOCTL_SYNC):
            self._alive()
            return 0
        return None

    def _tick(self):
        """Count one op; True when this op is the one the power cut interrupts."""
        self.ops += 1
        if self.budget is None:
            return False
        self.budget -= 1
        if self.budget > 0:
            return False
        self.dead = True
        return True

    def _cut_program(self, a, data):
        mem = self.mem
        fault = self.fault
        if fault == "after":
            mem[a:a + len(data)] = data
        elif fault == "torn":
            k = self.rand(len(data) + 1)
            mem[a:a + k] = data[:k]
        elif fault == "bits":
            for i in range(len(data)):
                clear = ~data[i] & 0xFF           # bits the program would take 1 -> 0
                mem[a + i] &= ~(clear & self.rand(256)) & 0xFF
        # "lost": nothing lands

    def _cut_erase(self, a):
        mem = self.mem
        size = self.block_size
        fault = self.fault
        n = a // size
        if fault == "after":
            mem[a:a + size] = self._ff
            self.erase_counts[n] += 1
        elif fault == "torn":
            k = self.rand(size + 1)
            mem[a:a + k] = self._ff[:k]
        elif fault == "bits":
            for i in range(size):
                r = self.rand(3)
                if r == 0:
                    mem[a + i] = 0xFF
                elif r == 2:
                    mem[a + i] |= self.rand(256)
