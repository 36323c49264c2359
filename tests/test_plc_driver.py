"""Module driver and byte links against a small fake 1376.2 module, in virtual time."""

import asyncio
import logging
import os
from datetime import date, datetime

import pytest

from concentrator.clock import LoopClock
from plc_driver import gdw13762 as g
from plc_driver.driver import ModuleDenied, ModuleDriver, ModuleTimeout, ReadFailure
from plc_driver.link import LinkClosed, MemoryLink, SerialLink
from simulator.vtime import VirtualTimeLoop

CCO = "000000002600"


def run(coro):
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)


def meter_reply(address: str) -> bytes:
    """A recognisable stand-in for the meter's DL/T 645 answer."""
    return b"\x68" + g.address_to_wire(address) + b"\x68\x91\x00\x16"


class FakeModule:
    """Plays the CCO: answers queries, forwards 13 F1 after a per-meter delay or denies it."""

    def __init__(self, link: MemoryLink, *, kind: int = 2, comm_mode: int = 3) -> None:
        self.link = link
        self.kind = kind  # 03 F10 module kind: 1 narrowband, 2 broadband
        self.comm_mode = comm_mode
        self.master = "000000009999"
        self.delays: dict[str, float] = {}  # meter -> seconds until it answers
        self.silent: set[str] = set()
        self.deny: dict[str, int] = {}
        self.deny_commands: dict[tuple[int, int], int] = {}
        self.received: list[g.Frame13762] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._serve())

    def send(self, frame: g.Frame13762) -> None:
        self.link.write(g.encode(frame))

    async def _serve(self) -> None:
        dec = g.Gdw13762StreamDecoder()
        while True:
            try:
                chunk = await self.link.read()
            except LinkClosed:
                return
            for frame in dec.feed(chunk):
                assert isinstance(frame, g.Frame13762), frame
                self.received.append(frame)
                self._handle(frame)

    def _handle(self, f: g.Frame13762) -> None:
        seq, mode = f.seq, self.comm_mode
        if (f.afn, f.fn) in self.deny_commands:
            self.send(g.deny(seq, self.deny_commands[(f.afn, f.fn)], mode))
        elif f.afn == 0x00:
            return  # the concentrator's confirm of a report
        elif (f.afn, f.fn) == (0x03, 1):
            self.send(g.reply(3, 1, seq, mode, g.VendorVersion("ES", "RT", date(2011, 12, 8), 19)))
        elif (f.afn, f.fn) == (0x03, 4):
            self.send(g.reply(3, 4, seq, mode, g.MasterAddress(self.master)))
        elif (f.afn, f.fn) == (0x03, 10):
            self.send(g.reply(3, 10, seq, mode, self._run_info()))
        elif (f.afn, f.fn) == (0x05, 1):
            self.master = g.decode_data_unit(f).address
            self.send(g.confirm(seq, mode))
        elif (f.afn, f.fn) == (0x10, 1):
            self.send(g.reply(0x10, 1, seq, mode, g.SlaveCount(371, 1500)))
        elif f.afn == 0x13:
            asyncio.get_running_loop().create_task(self._forward(f))
        else:
            self.send(g.confirm(seq, mode, unit=g.Confirm(0xFFFFFFFF, 7)))

    def _run_info(self) -> g.ModuleRunInfo:
        return g.ModuleRunInfo(
            bytes([self.kind, 0, 1, 0, 0, 0]), 20, 60, 512, 256, 5, self.master, 1015, 0,
            date(2013, 3, 1), date(2016, 7, 20), g.VendorVersion("ES", "RT", date(2011, 12, 8), 19),
        )

    async def _forward(self, f: g.Frame13762) -> None:
        meter = f.destination
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delays.get(meter, 1.0))
            if meter in self.silent:
                return
            if meter in self.deny:
                self.send(g.deny(f.seq, self.deny[meter], self.comm_mode, to=f))
                return
            self.send(g.monitor_reply(f, meter_reply(meter), duration_s=1, cmd_quality=9,
                                      reply_quality=11, phase=2))
        except LinkClosed:
            pass
        finally:
            self.in_flight -= 1


async def started(kind: int = 2, **kw):
    a, b = MemoryLink.pair(delay=0.05)
    module = FakeModule(b, kind=kind)
    module.start()
    driver = ModuleDriver(a, comm_mode=3, **kw)
    await driver.start()
    return driver, module


def test_start_learns_module_info_and_concurrency():
    async def main():
        driver, module = await started()
        assert driver.info.vendor.vendor == "ES"
        assert driver.cco_address == "000000009999"  # learnt from 03 F4
        assert driver.max_concurrent == 5  # broadband module
        assert driver.read_timeout == 30.0  # 20 s monitor timeout + margin
        narrow, _ = await started(kind=1, cco_address=CCO)
        assert narrow.max_concurrent == 1
        assert narrow.cco_address == CCO
        assert (await narrow.slave_count()) == g.SlaveCount(371, 1500)
        await driver.close()
        await narrow.close()
        return module

    run(main())


def test_three_reads_in_flight_are_matched_by_seq():
    async def main():
        driver, module = await started()
        meters = ["000000000101", "000000000102", "000000000103"]
        # Replies come back in reverse order of the requests.
        module.delays = {m: d for m, d in zip(meters, (3.0, 2.0, 1.0), strict=True)}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        results = await asyncio.gather(
            *(driver.read(m, ("000000000201",), b"\x68req\x16") for m in meters)
        )
        took = loop.time() - t0
        assert module.max_in_flight == 3
        for m, r in zip(meters, results, strict=True):
            assert r.ok and r.reply == meter_reply(m)
            assert (r.cmd_quality, r.reply_quality, r.phase, r.duration_s) == (9, 11, 2, 1)
        assert len({r.seq for r in results}) == 3
        assert 3.0 < took < 3.5  # concurrent: the slowest meter, not the sum
        assert [r.elapsed for r in results] == sorted((r.elapsed for r in results), reverse=True)
        reads = [f for f in module.received if f.afn == 0x13]
        assert all(f.relays == ("000000000201",) and f.source == "000000009999" for f in reads)
        await driver.close()

    run(main())


def test_narrowband_module_gets_one_read_at_a_time():
    async def main():
        driver, module = await started(kind=1)
        meters = [f"00000000010{i}" for i in range(3)]
        results = await asyncio.gather(*(driver.read(m, (), b"\x68r\x16") for m in meters))
        assert all(r.ok for r in results)
        assert module.max_in_flight == 1
        await driver.close()

    run(main())


def test_read_timeout_in_virtual_time_and_a_late_answer_is_ignored(caplog):
    async def main():
        driver, module = await started()
        module.delays["000000000666"] = 50.0  # answers, but far too late
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await driver.read("000000000666", (), b"\x68r\x16", timeout=8.0)
        assert r.failure == ReadFailure.TIMEOUT and not r.ok and r.reply is None
        assert 8.0 <= r.elapsed < 8.01 and loop.time() - t0 < 8.1
        # The driver keeps working, and the late answer does not land on a later read.
        ok = await driver.read("000000000101", (), b"\x68r\x16")
        assert ok.ok and ok.reply == meter_reply("000000000101")
        await asyncio.sleep(50)
        await driver.close()

    with caplog.at_level(logging.WARNING, logger="plc_driver.driver"):
        run(main())
    assert any("matches no request" in r.getMessage() for r in caplog.records)


def test_deny_from_module_is_a_read_result_with_the_code():
    async def main():
        driver, module = await started()
        module.deny["000000000404"] = 11
        module.deny["000000000405"] = 8
        r1, r2 = await asyncio.gather(
            driver.read("000000000404", ("000000000201",), b"\x68r\x16"),
            driver.read("000000000405", (), b"\x68r\x16"),
        )
        assert r1.failure == ReadFailure.DENIED and r1.deny_code == 11
        assert r1.deny_reason == "slave did not answer"
        assert r2.deny_code == 8
        await driver.close()

    run(main())


def test_commands_are_confirmed_or_raise_typed_errors():
    async def main():
        driver, module = await started(cco_address=CCO)
        assert module.master == CCO  # start() set the configured CCO address via 05 F1
        slaves = [(f"{i:012d}", 2) for i in range(20)]
        assert await driver.add_slaves(slaves) == 20
        adds = [g.decode_data_unit(f) for f in module.received if (f.afn, f.fn) == (0x11, 1)]
        assert [len(u.slaves) for u in adds] == [16, 4]
        assert [s for u in adds for s in u.slaves] == slaves
        await driver.delete_slaves(["000000000003"])
        await driver.start_search(("000000000201", "000000000305"), duration_min=15)
        search = [f for f in module.received if (f.afn, f.fn) == (0x11, 5)][-1]
        assert search.source == CCO and search.relays == ("000000000201",)
        assert search.destination == "000000000305"
        assert g.decode_data_unit(search).duration_min == 15
        await driver.stop_search()
        await driver.pause()
        await driver.resume()
        await driver.restart()
        conf = await driver.broadcast(b"\x68bcast\x16")
        assert conf.wait_s == 7
        assert [(f.afn, f.fn) for f in module.received[-4:]] == [
            (0x12, 2), (0x12, 3), (0x12, 1), (0x05, 3)]
        module.deny_commands[(0x11, 1)] = 6
        with pytest.raises(ModuleDenied) as err:
            await driver.add_slaves([("000000000001", 2)])
        assert err.value.code == 6 and "duplicate meter" in str(err.value)
        module.task.cancel()  # the module goes deaf
        with pytest.raises(ModuleTimeout):
            await driver.pause()
        await driver.close()

    run(main())


def test_module_reports_are_queued_and_confirmed():
    async def main():
        driver, module = await started(cco_address=CCO)
        node = g.FoundNode("000000000777", 2, 1, 0)
        module.send(g.report_slave(41, 3, node, CCO, ("000000000305",), quality=6))
        module.send(g.reply(0x06, 3, 42, 3, g.RouteWorkStatus(2), prm=1))
        got = []
        async for report in driver.reports():
            got.append(report)
            if len(got) == 2:
                break
        assert got[0].unit == g.ReportSlaves((node,))
        assert got[0].node == "000000000777" and got[0].frame.relays == ("000000000305",)
        assert got[0].frame.info.cmd_quality == 6
        assert got[1].unit.search_done
        await asyncio.sleep(1)
        confirms = [f for f in module.received if (f.afn, f.fn) == (0x00, 1)]
        assert [f.seq for f in confirms] == [41, 42]
        assert all(f.direction == g.DOWN and f.prm == 0 for f in confirms)
        await driver.close()

    run(main())


def test_clock_request_is_answered_when_a_clock_is_given():
    async def main():
        a, b = MemoryLink.pair()
        module = FakeModule(b)
        module.start()
        driver = ModuleDriver(a, comm_mode=3, clock=LoopClock(datetime(2024, 5, 6, 7, 8, 9)))
        await driver.start()
        module.send(g.reply(0x14, 2, 77, 3, g.ClockRequest(), prm=1))
        await asyncio.sleep(1)
        answer = [f for f in module.received if f.afn == 0x14][-1]
        assert answer.seq == 77 and g.decode_data_unit(answer).time.date() == date(2024, 5, 6)
        await driver.close()

    run(main())


def test_garbage_on_the_line_is_logged_and_frames_still_flow(caplog):
    async def main():
        driver, module = await started()
        module.link.write(b"\x01\x02\x03")  # noise before a report
        module.send(g.reply(0x06, 3, 5, 3, g.RouteWorkStatus(1), prm=1))
        report = await anext(driver.reports())
        assert report.unit == g.RouteWorkStatus(1)
        await driver.close()

    with caplog.at_level(logging.WARNING, logger="plc_driver.driver"):
        run(main())
    assert any("rejected 01 02 03" in r.getMessage() for r in caplog.records)


def test_link_closed_fails_pending_reads_and_ends_reports():
    async def main():
        driver, module = await started()
        module.delays["000000000101"] = 10.0
        pending = asyncio.create_task(driver.read("000000000101", (), b"\x68r\x16"))
        reports = asyncio.create_task(anext(driver.reports(), "ended"))
        await asyncio.sleep(1)
        module.link.close()  # the port vanishes
        with pytest.raises(LinkClosed):
            await pending
        assert await reports == "ended"
        assert driver.closed
        with pytest.raises(LinkClosed):
            await driver.read("000000000102", (), b"\x68r\x16")
        with pytest.raises(LinkClosed):
            await driver.pause()
        await driver.close()

    run(main())


def test_start_on_a_silent_module_uses_defaults():
    async def main():
        a, _b = MemoryLink.pair()
        driver = ModuleDriver(a, comm_mode=3, cco_address=CCO, command_timeout=2.0)
        assert await driver.start() is None
        assert driver.max_concurrent == 1
        await driver.close()

    run(main())


# --- links --------------------------------------------------------------------------------

def test_memory_link_delay_runs_in_virtual_time_and_keeps_order():
    async def main():
        a, b = MemoryLink.pair(delay=0.5)
        loop = asyncio.get_running_loop()
        a.write(b"one")
        a.delay = 0.1  # a shorter delay must not overtake the earlier chunk
        a.write(b"two")
        assert await b.read() == b"one"
        assert loop.time() == pytest.approx(0.5)
        assert await b.read() == b"two"
        b.write(b"back")
        assert await a.read() == b"back"
        a.close()
        with pytest.raises(LinkClosed):
            await b.read()
        with pytest.raises(LinkClosed):
            b.write(b"x")

    run(main())


def test_serial_link_over_a_pty():
    async def main():
        master, slave = os.openpty()
        link = SerialLink(os.ttyname(slave))
        os.close(slave)  # the link holds its own descriptor
        try:
            os.write(master, b"\x68\x0f")
            assert await asyncio.wait_for(link.read(), 2) == b"\x68\x0f"
            link.write(b"hello")
            await asyncio.sleep(0.05)
            assert os.read(master, 100) == b"hello"
            pending = asyncio.create_task(link.read())
            await asyncio.sleep(0.05)
            os.close(master)  # the adapter vanishes
            with pytest.raises(LinkClosed):
                await asyncio.wait_for(pending, 2)
            with pytest.raises(LinkClosed):
                link.write(b"x")
        finally:
            link.close()

    asyncio.run(main())


def test_serial_link_missing_port_is_link_closed():
    with pytest.raises(LinkClosed):
        SerialLink("/dev/does-not-exist-13762")
