"""The simulated master station: strict checks, trace, dedup, master-cmd, and a kill -9 uplink."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from datetime import date, datetime
from decimal import Decimal as D
from pathlib import Path

from concentrator.clock import LoopClock
from concentrator.store import CurveDay, DailyReading, MeterRecord, OutboxItem, Store
from simulator.master import MasterStation
from uplink import gdw13761 as g
from uplink import outbox as ob

T1_LOGIN = bytes.fromhex("68 32 00 32 00 68 C9 03 44 04 00 00 02 71 00 00 01 00 88 16")
T2_CONFIRM = bytes.fromhex("68 32 00 32 00 68 0B 03 44 04 00 00 00 61 00 00 01 00 B8 16")
ADDR = g.Address("4403", 4)
KEY = "4403:4"
START = datetime(2024, 5, 10, 8, 0)
ROOT = Path(__file__).resolve().parents[1]


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    dec = g.Gdw13761StreamDecoder()
    while True:
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "master closed the connection"
        for f in dec.feed(data):
            return g.encode(f)


async def _master(tmp_path: Path, **kw) -> MasterStation:
    m = MasterStation(tmp_path / "master.db", clock=LoopClock(START), **kw)
    await m.start()
    return m


def _upload(seq: int, items: list[OutboxItem], *, fir: bool = True, fin: bool = True
            ) -> bytes:
    (batch,) = ob.pack_items(items, point_of=lambda m: 1, event_info=None)
    return g.encode(g.Frame13761(g.Control(True, True, False, False, 4), ADDR, batch.afn,
                                 g.Seq(seq, fir, fin, con=True), batch.units))


def _daily(seq: int) -> OutboxItem:
    return OutboxItem(seq, "daily", "000000000001", DailyReading(
        "000000000001", date(2024, 5, 9), D(seq), START), START)


async def test_login_vector_is_confirmed_byte_exactly_and_traced(tmp_path):
    m = await _master(tmp_path, trace=tmp_path / "trace.log")
    reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
    writer.write(T1_LOGIN)
    assert await _read_frame(reader) == T2_CONFIRM
    writer.close()
    await m.stop()
    m.close()
    lines = (tmp_path / "trace.log").read_text().splitlines()
    assert [ln.split()[1:] for ln in lines] == [["up", T1_LOGIN.hex()], ["down", T2_CONFIRM.hex()]]
    datetime.fromisoformat(lines[0].split()[0])          # the first field is a timestamp
    assert m.violations == []


async def test_strict_checks_record_violations(tmp_path):
    m = await _master(tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
    writer.write(_upload(0, [_daily(1)]))                       # data before login
    bad_cs = bytearray(T1_LOGIN)
    bad_cs[-2] ^= 0xFF
    writer.write(bytes(bad_cs))                                 # checksum wrong
    writer.write(T1_LOGIN)                                      # PSEQ 1
    await _read_frame(reader)
    writer.write(_upload(5, [_daily(2)]))                       # PSEQ jumps 1 -> 5
    await _read_frame(reader)
    writer.write(_upload(6, [_daily(3)], fir=False))            # FIR = 0 with nothing open
    await _read_frame(reader)
    await asyncio.sleep(0.1)
    writer.close()
    await m.stop()
    messages = [msg for _, msg, _ in m.violations]
    assert any("before login" in x for x in messages)
    assert any("CS" in x for x in messages)
    assert any("PSEQ 5 does not follow 1" in x for x in messages)
    assert any("FIR = 0 without a first frame" in x for x in messages)
    # The bad frame may be reported in pieces while the decoder resynchronises.
    assert all("before login" in x or "bad frame" in x or "PSEQ" in x or "FIR" in x
               for x in messages)
    count = m.db.execute("SELECT COUNT(*) FROM violations").fetchone()[0]
    assert count == len(messages)
    m.close()


async def test_uploads_are_deduplicated_by_terminal_and_outbox_seq(tmp_path):
    m = await _master(tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
    writer.write(T1_LOGIN)
    await _read_frame(reader)
    curve = OutboxItem(8, "curve", "000000000001", CurveDay(
        "000000000001", date(2024, 5, 9), 15, tuple(D(i) for i in range(96))), START)
    frame = _upload(2, [_daily(7), curve])
    for _ in range(3):                                          # re-sent after lost confirms
        writer.write(frame)
        answer = g.decode(await _read_frame(reader))
        assert answer.afn == 0 and answer.seq.seq == 2
    await m.stop()
    rows = m.uploads(KEY)
    assert [(r["seq"], r["copies"]) for r in rows] == [(7, 3), (8, 3)]
    assert m.upload_summary()["readings"] == 1 + 96
    m.close()


async def test_master_cmd_talks_to_a_terminal_through_the_master(tmp_path):
    from tests.test_uplink import FakeServices, make_client, make_store, running
    store = make_store(tmp_path)
    store.upsert_meter(MeterRecord("000000000001", point=1))
    m = await _master(tmp_path)
    client = make_client(store, m.port, services=FakeServices())
    client.terminal = g.Address("4403", 1)
    async with running(client):
        await m.wait_login("4403:1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from simulator.cli import main; main()", "master-cmd",
            "--master", f"127.0.0.1:{m.port}", "--terminal", "4403:1", "time",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        assert abs((datetime.fromisoformat(json.loads(out)) - START).total_seconds()) < 60
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from simulator.cli import main; main()", "master-cmd",
            "--master", f"127.0.0.1:{m.port}", "--terminal", "4403:1", "raw", "--afn", "0B",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert json.loads(out)[0]["items"][0]["name"] == "all denied"
    await m.stop()
    m.close()


CHILD = textwrap.dedent("""
    import asyncio, sys
    from datetime import datetime
    from concentrator.clock import LoopClock
    from concentrator.config import HostPort, UplinkConfig
    from concentrator.store import Store
    from uplink import gdw13761 as g
    from uplink.client import UplinkClient, UplinkOptions

    class Services:
        async def read_energy_now(self, m): return None
        async def forward_645(self, m, f, t): return None
        async def archive_changed(self, u, r): pass
        async def set_time(self, w): pass
        async def reset(self, k): pass

    async def main():
        clock = LoopClock(datetime(2024, 5, 10, 8, 0))
        store = Store.open(sys.argv[1], clock=clock)
        cfg = UplinkConfig(HostPort("127.0.0.1", int(sys.argv[2])), reconnect_backoff_cap=1.0)
        opts = UplinkOptions(window=4, max_frame_bytes=512, backoff_base=0.05,
                             poll_interval=0.2)
        await UplinkClient(cfg, g.Address("4403", 1), store, Services(), clock, opts).run()

    asyncio.run(main())
""")


async def test_kill_9_mid_upload_loses_and_duplicates_nothing_at_the_master(tmp_path):
    db = tmp_path / "store.db"
    store = Store.open(db, clock=LoopClock(START))
    with store.batch():
        for i in range(1, 301):
            a = f"{i:012d}"
            store.upsert_meter(MeterRecord(a, point=i))
            store.write_daily(DailyReading(a, date(2024, 5, 9), D(i), START))
            store.write_curve(a, date(2024, 5, 9), {s: D(i + s) for s in range(96)})
    expected = {i.seq for i in store.outbox_pending(10_000)}
    store.close()
    m = await _master(tmp_path)

    async def child() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(db), str(m.port), cwd=ROOT,
            stderr=asyncio.subprocess.DEVNULL)

    proc = await child()
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while m.upload_summary()["items"] < 60:
        assert loop.time() < end, "the uplink never started uploading"
        await asyncio.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    at_kill = m.upload_summary()["items"]
    assert at_kill < len(expected)                               # really mid-upload
    proc = await child()                                         # restart: resumes
    end = loop.time() + 60
    while m.upload_summary()["items"] < len(expected):
        assert loop.time() < end, f"stuck at {m.upload_summary()}"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)                                     # last confirmations commit
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    await m.stop()
    rows = m.uploads("4403:1")
    got = [r["seq"] for r in rows if r["part"] == 0]
    assert len(got) == len(set(got)) and set(got) == expected
    assert m.violations == []
    store = Store.open(db, clock=LoopClock(START))
    assert store.outbox_stats().depth == 0
    store.close()
    m.close()
