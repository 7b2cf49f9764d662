# MicroPython side of bench/codec.py: timings and heap use of the node's encode path,
# beside MicroPython's own json on the same reading. Prints one JSON object.
# Usage: micropython bench/mp_codec.py REPO_ROOT [ROUNDS]
import gc
import json
import sys
import time

sys.path.insert(0, sys.argv[1])
from protocol import cbor, messages  # noqa: E402

ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
FIELDS = [1, 7, 3, 1234, 3600000, "temp", 21.5]
OBJ = {"node": 7, "epoch": 3, "seq": 1234, "t": 3600000, "topic": "temp", "value": 21.5}


def per_call_us(fn, rounds, repeats=7):
    # the best of `repeats` runs of rounds/repeats calls: a run that the host preempted
    # (a shared, noisy machine) is slower, never faster, than the code's own cost
    fn()
    n = max(1, rounds // repeats)
    best = None
    for _ in range(repeats):
        t0 = time.ticks_us()
        for _ in range(n):
            fn()
        us = time.ticks_diff(time.ticks_us(), t0) / n
        if best is None or us < best:
            best = us
    return best


def heap_per_call(fn, rounds=200):
    fn()
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    for _ in range(rounds):
        fn()
    used = gc.mem_alloc() - a0
    gc.enable()
    return used / rounds


enc = cbor.Encoder(128)
encoded = bytes(cbor.dumps(FIELDS))
as_json = json.dumps(FIELDS)
obj_json = json.dumps(OBJ)


def hot():
    messages.encode_event_into(enc, 7, 3, 1234, 3600000, "temp", 21.5)


writer = messages.EventWriter(7, 3)


def fast():
    writer.event(1234, 3600000, "temp", 21.5)


def fast_int():
    writer.event(1234, 3600000, "temp", 215)


def generic():
    cbor.dumps(FIELDS)


def js():
    json.dumps(FIELDS)


def js_obj():
    json.dumps(OBJ)


def dec():
    cbor.loads(encoded)


def dec_msg():
    messages.decode(encoded)


def js_dec():
    json.loads(as_json)


result = {
    "event_writer_us": per_call_us(fast, ROUNDS),
    "event_writer_int_us": per_call_us(fast_int, ROUNDS),
    "heap_event_writer": heap_per_call(fast),
    "encode_event_into_us": per_call_us(hot, ROUNDS),
    "cbor_dumps_us": per_call_us(generic, ROUNDS),
    "json_dumps_array_us": per_call_us(js, ROUNDS),
    "json_dumps_object_us": per_call_us(js_obj, ROUNDS),
    "cbor_loads_us": per_call_us(dec, ROUNDS),
    "messages_decode_us": per_call_us(dec_msg, ROUNDS),
    "json_loads_array_us": per_call_us(js_dec, ROUNDS),
    "heap_encode_event_into": heap_per_call(hot),
    "heap_cbor_dumps": heap_per_call(generic),
    "heap_json_dumps_array": heap_per_call(js),
    "bytes_hot": enc.length,
}
print(json.dumps(result))
