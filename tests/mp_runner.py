"""Run plain-assert test modules under any Python, MicroPython included.

Usage: micropython tests/mp_runner.py test_spool [test_blockdev ...]
with MICROPYPATH=<checkout>:<checkout>/tests/both:.frozen

Each named module is imported and every function whose name starts with
``test_`` is called with no arguments, in sorted order (MicroPython's dir()
order is arbitrary).  The last line is ``N passed, N failed``; the exit status
is 1 when anything failed.  It knows nothing of pytest: the same modules are
collected by pytest on CPython.
"""
import sys

try:
    import gc
except ImportError:
    gc = None


def _print_exception(e):
    if hasattr(sys, "print_exception"):
        sys.print_exception(e)
    else:
        import traceback
        traceback.print_exc()


def run(modnames):
    passed = failed = 0
    for modname in modnames:
        try:
            mod = __import__(modname)
        except Exception as e:  # an import error fails the module, not the run
            failed += 1
            print("FAIL %s (import): %r" % (modname, e))
            _print_exception(e)
            continue
        for name in sorted(dir(mod)):
            if not name.startswith("test_"):
                continue
            fn = getattr(mod, name)
            if not callable(fn):
                continue
            try:
                fn()
                passed += 1
                print("PASS %s.%s" % (modname, name))
            except Exception as e:
                failed += 1
                print("FAIL %s.%s: %r" % (modname, name, e))
                _print_exception(e)
            if gc:
                gc.collect()
    print("%d passed, %d failed" % (passed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if run(sys.argv[1:]) else 0)
