"""Frames per second for decode and encode of each wire protocol (median of several runs).

Goal (issue 2): at least 100,000 DL/T 645 read replies decoded per second on one core.
Run: .venv/bin/python bench/codec.py   (writes bench/codec.json)
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concentrator import dlt645  # noqa: E402
from plc_driver import gdw13762  # noqa: E402
from uplink import gdw13761  # noqa: E402

FRAMES = {
    # protocols.md V2: reply to a read of forward active energy (00010000)
    "dlt645 read reply": (
        dlt645,
        "FE FE FE FE 68 94 35 21 90 88 55 68 91 08 33 33 34 33 59 35 33 33 81 16",
    ),
    # protocols.md §4.7: AFN13 F1 monitor slave node carrying a DL/T 645 read
    "1376.2 AFN13 F1": (
        gdw13762,
        "68 2F 00 41 04 00 00 00 00 01 00 26 00 00 00 00 61 01 00 00 00 00 13 01 00 02 00 00"
        " 10 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16 32 16",
    ),
    # protocols.md T1: login
    "1376.1 login": (gdw13761, "68 32 00 32 00 68 C9 03 44 04 00 00 02 71 00 00 01 00 88 16"),
}


def rate(fn, arg, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return n / (time.perf_counter() - t0)


def main() -> dict:
    results = {}
    for name, (codec, hexstr) in FRAMES.items():
        raw = bytes.fromhex(hexstr)
        frame = codec.decode(raw)
        assert codec.encode(frame) == raw, name
        n = 50_000
        dec = statistics.median(rate(codec.decode, raw, n) for _ in range(7))
        enc = statistics.median(rate(codec.encode, frame, n) for _ in range(7))
        results[name] = {"decode_per_s": round(dec), "encode_per_s": round(enc)}
        print(f"{name:20s} decode {dec:>10,.0f} frames/s   encode {enc:>10,.0f} frames/s")
    # Value decoding too: what the reader does with every reply.
    raw = bytes.fromhex(FRAMES["dlt645 read reply"][1])

    def decode_energy(b: bytes):
        f = dlt645.decode(b)
        return dlt645.decode_value(int.from_bytes(f.data[:4], "little"), f.data[4:])

    full = statistics.median(rate(decode_energy, raw, 50_000) for _ in range(7))
    results["dlt645 read reply + value"] = {"decode_per_s": round(full)}
    print(f"{'dlt645 reply+value':20s} decode {full:>10,.0f} frames/s")
    goal = results["dlt645 read reply"]["decode_per_s"] >= 100_000
    print(f"goal >= 100,000 DL/T 645 replies decoded/s on one core: {'met' if goal else 'NOT met'}")
    out = {"python": platform.python_version(), "machine": platform.machine(), "results": results}
    Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
