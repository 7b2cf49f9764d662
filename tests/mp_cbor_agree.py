# Feeds protocol/cbor.py under MicroPython the CBOR items that tests/test_cbor_props.py
# generated on CPython, one hex string per line, and prints one line per input:
#     OK <hex of dumps(loads(data))>
#     ERR <CBORDecodeError message>
#     BAD:<exception type> <message>       (anything else: always a bug)
# The CPython side imports outcome() from here and compares line by line, so both
# interpreters must agree on every accepted item's re-encoding and every error message.
#
# Usage: micropython tests/mp_cbor_agree.py REPO_ROOT FILE
import binascii
import sys

if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])

from protocol import cbor  # noqa: E402


def outcome(data):
    try:
        value = cbor.loads(data)
    except cbor.CBORDecodeError as e:
        return "ERR " + str(e)
    except Exception as e:  # a bug: loads must only raise CBORDecodeError
        return "BAD:" + type(e).__name__ + " " + str(e)
    try:
        again = cbor.dumps(value)
    except Exception as e:  # a bug: whatever loads returns must encode again
        return "BAD:reencode " + type(e).__name__ + " " + str(e)
    return "OK " + binascii.hexlify(again).decode()


def main(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            print(outcome(binascii.unhexlify(line)))


if __name__ == "__main__":
    main(sys.argv[2])
