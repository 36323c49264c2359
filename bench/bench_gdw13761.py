"""Benchmark of the Q/GDW 1376.1 codec (prints figures, writes JSON beside this script).

Run: ``.venv/bin/python bench/bench_gdw13761.py``

Frames per second (best of 5 timeit repeats) for decode and encode of a login frame (T1 of
protocols.md §3.11) and of an AFN0C F129 reply with 4 tariffs, EC and Tp (the T5 shape),
plus ``decode_units`` of that reply and byte-at-a-time stream decoding of logins.
"""

from __future__ import annotations

import json
import platform
import timeit
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from uplink import gdw13761 as g

LOGIN = bytes.fromhex("68 32 00 32 00 68 C9 03 44 04 00 00 02 71 00 00 01 00 88 16")


def f129_reply() -> bytes:
    energy = g.ForwardEnergy(datetime(2013, 9, 16, 10, 23), Decimal("999999.8765"),
                             (Decimal("123456.7890"), Decimal("1.5"), None, Decimal("0")))
    frame = g.Frame13761(g.Control(True, False, True, False, 8), g.Address("1100", 1, msa=123),
                         0x0C, g.Seq(0, tpv=True), (g.unit(1, 129, energy),),
                         ec=g.EventCounters(3, 7), tp=g.Tp(0, g.DayTime(16, 10, 23, 5), 0))
    return g.encode(frame)


def rate(fn, number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return number / best


def main() -> None:
    reply = f129_reply()
    login_frame, reply_frame = g.decode(LOGIN), g.decode(reply)
    n = 20000
    stream = LOGIN * 200

    def bytewise() -> None:
        dec = g.Gdw13761StreamDecoder()
        for i in range(len(stream)):
            dec.feed(stream[i:i + 1])

    results = {
        "python": platform.python_version(),
        "login_decode_per_s": rate(lambda: g.decode(LOGIN), n),
        "login_encode_per_s": rate(lambda: g.encode(login_frame), n),
        "f129_reply_bytes": len(reply),
        "f129_decode_per_s": rate(lambda: g.decode(reply), n),
        "f129_encode_per_s": rate(lambda: g.encode(reply_frame), n),
        "f129_decode_units_per_s": rate(lambda: g.decode_units(reply_frame), n),
        "stream_bytewise_logins_per_s": 200 / min(timeit.repeat(bytewise, number=1,
                                                                     repeat=3)),
    }
    for key, value in results.items():
        print(f"{key:32s} {value:,.0f}" if isinstance(value, float) else f"{key:32s} {value}")
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
