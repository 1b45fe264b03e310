"""FlashSim: RAM NOR flash for tests and benchmarks, speaking the block-device protocol.

It enforces erase-before-program and program-unit alignment, counts erases per block, keeps a
set of bad blocks, and can cut power after the Nth program or erase with a chosen fault (see
FAULTS), raising PowerLoss; power_on() brings it back with whatever the cut left.  It lives
apart from blockdev.py so that boards, which never need it, never load it.

This module must not know the spool format: it moves bytes, nothing else.
"""
from tinymta.blockdev import (BlockDeviceError, IOCTL_BLOCK_COUNT, IOCTL_BLOCK_ERASE, IOCTL_BLOCK_SIZE,
                              IOCTL_DEINIT, IOCTL_INIT, IOCTL_SYNC)


class PowerLoss(Exception):
    """Raised by FlashSim when its power-cut budget runs out."""


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
