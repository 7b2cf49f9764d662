"""Codec benchmark: wire size and speed of Starling's CBOR messages.

Compares, in one run, a typical reading and a 10-reading batch against JSON and
SenML-JSON of the same data; encode/decode time on CPython (ours beside cbor2 and
json) and on MicroPython (ours beside its json), and heap bytes per encode on
MicroPython. Prints a table, or one JSON object with --json.
"""

import argparse
import json
import subprocess
import sys
import timeit
from pathlib import Path

import cbor2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import cbor, messages  # noqa: E402

NODE, EPOCH, SEQ, T, TIME_BASE = 7, 3, 1234, 3600000, 1795459200000
READINGS = [(T + 100 * i, "temp" if i % 2 == 0 else "hum", 21.5 + i * 0.25 if i % 2 == 0 else 40 + i)
            for i in range(10)]


def sizes() -> dict:
    event = messages.Event(NODE, EPOCH, SEQ, T, "temp", 21.5).encode()
    batch = messages.Batch(NODE, EPOCH, SEQ, READINGS).encode()
    one_json = json.dumps({"node": NODE, "epoch": EPOCH, "seq": SEQ, "t": T, "topic": "temp",
                           "value": 21.5}, separators=(",", ":")).encode()
    batch_json = json.dumps([{"node": NODE, "epoch": EPOCH, "seq": SEQ + i, "t": t, "topic": topic,
                              "value": v} for i, (t, topic, v) in enumerate(READINGS)],
                            separators=(",", ":")).encode()
    bn = f"urn:dev:starling:{NODE}:"
    one_senml = json.dumps([{"bn": bn, "n": "temp", "v": 21.5, "t": (TIME_BASE + T) / 1000}],
                           separators=(",", ":")).encode()
    recs = []
    for i, (t, topic, v) in enumerate(READINGS):
        rec = {"n": topic, "v": v, "t": (t - READINGS[0][0]) / 1000}
        if i == 0:
            rec.update({"bn": bn, "bt": (TIME_BASE + READINGS[0][0]) / 1000})
        recs.append(rec)
    batch_senml = json.dumps(recs, separators=(",", ":")).encode()
    return {
        "event_cbor": len(event), "event_json": len(one_json), "event_senml_json": len(one_senml),
        "batch10_cbor": len(batch), "batch10_json": len(batch_json), "batch10_senml_json": len(batch_senml),
    }


def cpython_speed(number: int) -> dict:
    fields = [1, NODE, EPOCH, SEQ, T, "temp", 21.5]
    data = cbor.dumps(fields)
    js = json.dumps(fields)
    enc = cbor.Encoder(128)
    writer = messages.EventWriter(NODE, EPOCH)

    def us(stmt):
        return min(timeit.repeat(stmt, number=number, repeat=3)) / number * 1e6

    return {
        "ours_encode_us": us(lambda: writer.event(SEQ, T, "temp", 21.5)),
        "ours_encode_into_us": us(lambda: messages.encode_event_into(enc, NODE, EPOCH, SEQ, T, "temp", 21.5)),
        "ours_dumps_us": us(lambda: cbor.dumps(fields)),
        "cbor2_dumps_us": us(lambda: cbor2.dumps(fields)),
        "ours_loads_us": us(lambda: cbor.loads(data)),
        "cbor2_loads_us": us(lambda: cbor2.loads(data)),
        "ours_decode_message_us": us(lambda: messages.decode(data)),
        "cbor2_plus_fields_us": us(lambda: messages.from_fields(cbor2.loads(data))),
        "json_dumps_us": us(lambda: json.dumps(fields)),
        "json_loads_us": us(lambda: json.loads(js)),
    }


def micropython_speed(rounds: int) -> dict:
    mp = Path(sys.executable).parent / "micropython"
    out = subprocess.run([str(mp), str(ROOT / "bench" / "mp_codec.py"), str(ROOT), str(rounds)],
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (for tests)")
    args = ap.parse_args()
    number = 2000 if args.quick else 50000
    result = {"sizes": sizes(), "cpython": cpython_speed(number),
              "micropython": micropython_speed(2000 if args.quick else 20000)}
    s, c, m = result["sizes"], result["cpython"], result["micropython"]
    result["targets"] = {
        "event_le_20_bytes": s["event_cbor"] <= 20,
        "mp_encode_not_slower_than_json": m["event_writer_us"] <= m["json_dumps_object_us"],
        "mp_heap_le_64_bytes": m["heap_event_writer"] <= 64,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print("Wire bytes                       CBOR   JSON  SenML-JSON")
    print(f"  one float reading            {s['event_cbor']:6d} {s['event_json']:6d} {s['event_senml_json']:10d}")
    print(f"  10-reading batch             {s['batch10_cbor']:6d} {s['batch10_json']:6d} {s['batch10_senml_json']:10d}")
    print()
    print("CPython µs per event           ours   cbor2  json   (ratio ours/cbor2)")
    print(f"  encode (hot path / dumps)  {c['ours_encode_us']:6.2f} {c['cbor2_dumps_us']:6.2f} {c['json_dumps_us']:6.2f}"
          f"   {c['ours_encode_us'] / c['cbor2_dumps_us']:.2f}")
    print(f"  decode (loads)             {c['ours_loads_us']:6.2f} {c['cbor2_loads_us']:6.2f} {c['json_loads_us']:6.2f}"
          f"   {c['ours_loads_us'] / c['cbor2_loads_us']:.2f}")
    print(f"  decode + validate message  {c['ours_decode_message_us']:6.2f} {c['cbor2_plus_fields_us']:6.2f}")
    print()
    print("MicroPython µs per event       ours   json   (ratio ours/json)")
    print(f"  encode (EventWriter)       {m['event_writer_us']:6.2f} {m['json_dumps_object_us']:6.2f}"
          f"   {m['event_writer_us'] / m['json_dumps_object_us']:.2f}   json of the reading as an object")
    print(f"  encode (EventWriter, int)  {m['event_writer_int_us']:6.2f} {m['json_dumps_object_us']:6.2f}"
          f"   {m['event_writer_int_us'] / m['json_dumps_object_us']:.2f}")
    print(f"  encode (EventWriter)       {m['event_writer_us']:6.2f} {m['json_dumps_array_us']:6.2f}"
          f"   {m['event_writer_us'] / m['json_dumps_array_us']:.2f}   json of the bare field array")
    print(f"  encode (generic dumps)     {m['cbor_dumps_us']:6.2f} {m['json_dumps_array_us']:6.2f}")
    print(f"  decode (loads)             {m['cbor_loads_us']:6.2f} {m['json_loads_array_us']:6.2f}"
          f"   {m['cbor_loads_us'] / m['json_loads_array_us']:.2f}")
    print(f"  heap bytes per encode      {m['heap_event_writer']:6.1f} {m['heap_json_dumps_array']:6.1f}"
          f"   (dumps: {m['heap_cbor_dumps']:.1f})")
    print()
    for name, ok in result["targets"].items():
        print(f"  target {name:34s} {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
