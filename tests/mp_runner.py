# Runs the plain test functions of one dual-interpreter test module under MicroPython.
#
# Usage: micropython tests/mp_runner.py REPO_ROOT MODULE_DIR MODULE [TEST ...]
# Prints one line per test: "PASS name" or "FAIL name: error", the traceback after a
# failure, and a closing "N passed, N failed" line that the pytest side checks.
import sys

root = sys.argv[1]
sys.path.insert(0, sys.argv[2])
sys.path.insert(0, root)
module = __import__(sys.argv[3])
wanted = sys.argv[4:]

names = [n for n in dir(module) if n.startswith("test_")]
names.sort()
if wanted:
    names = [n for n in names if n in wanted]
passed = 0
failed = 0
for name in names:
    try:
        getattr(module, name)()
    except Exception as exc:  # report every failure, keep going
        failed += 1
        print("FAIL " + name + ": " + repr(exc))
        sys.print_exception(exc)
    else:
        passed += 1
        print("PASS " + name)
print("%d passed, %d failed" % (passed, failed))
