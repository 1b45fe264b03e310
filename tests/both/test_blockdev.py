"""Block devices: FlashSim's NOR rules and fault models, FileBlockDevice's file handling.

Runs on CPython and MicroPython.
"""
import os

from tinymta import compat
from tinymta.blockdev import FileBlockDevice, BlockDeviceError
from tinymta.flashsim import FlashSim, PowerLoss
from spoolharness import raises


def _tmp(name):
    return "/tmp/tinymta-test-%d-%s" % (compat.random_u32(), name)


def test_flashsim_geometry_and_erased_start():
    dev = FlashSim(4, 512, 16)
    assert dev.ioctl(4, 0) == 4 and dev.ioctl(5, 0) == 512
    buf = bytearray(512)
    dev.readblocks(3, buf, 0)
    assert buf == b"\xff" * 512


def test_flashsim_program_needs_erase_and_alignment():
    dev = FlashSim(2, 512, 16)
    dev.writeblocks(0, b"\x00" * 16, 16)
    raises(BlockDeviceError, dev.writeblocks, 0, b"\x01" * 16, 16)     # not erased
    raises(BlockDeviceError, dev.writeblocks, 0, b"\x01" * 16, 8)      # misaligned offset
    raises(BlockDeviceError, dev.writeblocks, 0, b"\x01" * 8, 32)      # misaligned length
    raises(BlockDeviceError, dev.writeblocks, 0, b"\x01" * 32, 496)    # crosses the block end
    dev.ioctl(6, 0)
    dev.writeblocks(0, b"\x01" * 16, 16)
    assert dev.erase_counts == [1, 0]


def test_flashsim_fault_after_and_lost():
    dev = FlashSim(2, 512, 16)
    dev.arm(1, "after")
    raises(PowerLoss, dev.writeblocks, 0, b"\x00" * 16, 0)
    raises(PowerLoss, dev.readblocks, 0, bytearray(16), 0)              # dead until power_on
    dev.power_on()
    buf = bytearray(16)
    dev.readblocks(0, buf, 0)
    assert buf == b"\x00" * 16
    dev.arm(1, "lost")
    raises(PowerLoss, dev.writeblocks, 0, b"\x00" * 16, 16)
    dev.power_on()
    dev.readblocks(0, buf, 16)
    assert buf == b"\xff" * 16


def test_flashsim_fault_torn_is_a_prefix():
    for seed in range(1, 20):
        dev = FlashSim(1, 512, 16, seed=seed)
        data = bytes(range(64))
        dev.arm(1, "torn")
        raises(PowerLoss, dev.writeblocks, 0, data, 0)
        dev.power_on()
        got = bytearray(64)
        dev.readblocks(0, got, 0)
        k = 0
        while k < 64 and got[k] == data[k]:
            k += 1
        assert got[k:] == b"\xff" * (64 - k)


def test_flashsim_fault_bits_only_clears_intended_bits():
    dev = FlashSim(1, 512, 16, seed=7)
    data = bytes([0x0F, 0xF0, 0x55, 0x00] * 16)
    dev.arm(1, "bits")
    raises(PowerLoss, dev.writeblocks, 0, data, 0)
    dev.power_on()
    got = bytearray(64)
    dev.readblocks(0, got, 0)
    partial = 0
    for i in range(64):
        assert got[i] & data[i] == data[i]       # never a bit cleared that the program kept set
        if got[i] != data[i] and got[i] != 0xFF:
            partial += 1
    assert partial > 0


def test_flashsim_interrupted_erase():
    dev = FlashSim(1, 512, 16, seed=3)
    dev.writeblocks(0, b"\x00" * 512, 0)
    dev.arm(1, "bits")
    raises(PowerLoss, dev.ioctl, 6, 0)
    dev.power_on()
    got = bytearray(512)
    dev.readblocks(0, got, 0)
    assert got != b"\xff" * 512 and got != b"\x00" * 512
    assert dev.erase_counts == [0]               # an interrupted erase does not count
    dev.ioctl(6, 0)
    dev.readblocks(0, got, 0)
    assert got == b"\xff" * 512 and dev.erase_counts == [1]


def test_file_blockdev_create_reopen_and_persist():
    path = _tmp("bd")
    try:
        dev = FileBlockDevice(path, size=4 * 4096, block_size=4096, prog_unit=512)
        assert dev.ioctl(4, 0) == 4 and dev.ioctl(5, 0) == 4096
        buf = bytearray(4096)
        dev.readblocks(2, buf, 0)
        assert buf == b"\xff" * 4096
        dev.writeblocks(1, b"hello", 100)
        dev.ioctl(3, 0)
        dev.close()
        dev = FileBlockDevice(path, size=4 * 4096, block_size=4096)
        got = bytearray(5)
        dev.readblocks(1, got, 100)
        assert got == b"hello"
        assert dev.bytes_written == 0
        dev.close()
    finally:
        os.remove(path)


def test_file_blockdev_refuses_wrong_size_and_missing():
    path = _tmp("bd2")
    try:
        FileBlockDevice(path, size=8192, block_size=4096).close()
        e = raises(BlockDeviceError, FileBlockDevice, path, 16384, 4096)
        assert "8192" in str(e) and "16384" in str(e)
        e = raises(BlockDeviceError, FileBlockDevice, path + ".none", None, 4096)
        assert "no such" in str(e)
        with open(path, "ab") as f:
            f.write(b"x" * 100)                  # no longer a whole number of sectors
        e = raises(BlockDeviceError, FileBlockDevice, path, None, 4096)
        assert "truncated" in str(e)
    finally:
        os.remove(path)


def test_file_blockdev_bounds():
    path = _tmp("bd3")
    try:
        dev = FileBlockDevice(path, size=8192, block_size=4096)
        raises(BlockDeviceError, dev.readblocks, 2, bytearray(16), 0)
        raises(BlockDeviceError, dev.writeblocks, 1, b"x" * 16, 4090)
        dev.close()
    finally:
        os.remove(path)
