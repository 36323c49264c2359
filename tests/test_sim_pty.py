"""`concentrator-sim serve` on real ptys, in real time, driven as a field client would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import termios
import time
from decimal import Decimal
from pathlib import Path

import pytest

serial = pytest.importorskip("serial")

from concentrator import dlt645 as d  # noqa: E402
from plc_driver import gdw13762 as g  # noqa: E402
from plc_driver.driver import ModuleDriver  # noqa: E402
from plc_driver.link import SerialLink  # noqa: E402
from simulator.channel import Channel  # noqa: E402
from simulator.district import best_routes  # noqa: E402
from simulator.generate import generate  # noqa: E402
from simulator.scenario import dump  # noqa: E402

SIM = [str(Path(sys.executable).with_name("concentrator-sim"))]
ROOT = Path(__file__).resolve().parent.parent


# One server per test: on some kernels a pty cannot be reconfigured by a second pyserial
# open after the first one closed (tcsetattr EINVAL), so each test opens each port once.
@pytest.fixture()
def served(tmp_path):
    sc = generate(60, "feeder", seed=1, events=False)
    path = tmp_path / "district.yaml"
    dump(sc, str(path))
    proc = subprocess.Popen([*SIM, "serve", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    launched = time.monotonic()
    ports: dict[str, str] = {}
    for line in iter(proc.stdout.readline, ""):  # "" = the process ended
        if line.startswith("module:"):
            ports["module"] = line.split()[1]
        elif line.startswith("summary meter:"):
            ports["summary"] = line.split()[2]
        if len(ports) == 2:
            break
    if len(ports) < 2:
        proc.kill()
        pytest.fail(f"serve did not print its ptys: {proc.stderr.read() if proc.stderr else ''}")
    yield sc, path, ports, launched
    proc.terminate()
    proc.wait(10)


def transact(port: serial.Serial, raw: bytes, timeout: float = 3.0) -> g.Frame13762:
    port.write(raw)
    dec = g.Gdw13762StreamDecoder()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for item in dec.feed(port.read(port.in_waiting or 1)):
            if isinstance(item, g.Frame13762):
                return item
    raise AssertionError(f"no answer to {raw.hex(' ')}")


def test_a_plain_pyserial_client_gets_answers_to_the_vectors(served):
    sc, _, ports, _ = served
    with serial.Serial(ports["module"], 9600, parity=serial.PARITY_EVEN, timeout=0.2) as port:
        f = transact(port, bytes.fromhex("68 0F 00 41 00 00 50 00 00 00 03 08 00 9C 16"))
        assert (f.afn, f.fn, f.direction) == (0x03, 4, g.UP)
        assert g.decode_data_unit(f).address == sc.concentrator.address
        f = transact(port, bytes.fromhex("68 0F 00 41 00 00 00 00 00 00 10 01 00 52 16"))
        assert g.decode_data_unit(f).max_supported == 2040
        f = transact(port, bytes.fromhex("68 0F 00 41 00 00 5F 00 00 00 03 01 00 A4 16"))
        assert g.decode_data_unit(f).vendor == "SM"


def truth_registers(path: Path, at: float) -> dict:
    out = subprocess.run([*SIM, "truth", str(path), "--at", f"{at:.0f}", "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_a_meter_three_relays_out_reads_the_value_the_truth_command_reports(served):
    sc, path, ports, launched = served
    routes = best_routes(Channel(sc), 0.0)
    meter = next(m for m in sc.meters if len(routes.get(m.address, ())) == 3
                 and m.protocol == "dlt645-2007")
    relays = routes[meter.address]

    async def main():
        link = SerialLink(ports["module"])
        # pyserial's timeout=0 leaves VMIN = 0: a Linux tty then polls readable and read()
        # returns b"" while idle, which SerialLink takes for a vanished port. VMIN = 1 keeps
        # the idle port quiet (reported to the plc_driver owner).
        attrs = termios.tcgetattr(link._fd)
        attrs[6][termios.VMIN] = 1
        termios.tcsetattr(link._fd, termios.TCSANOW, attrs)
        driver = ModuleDriver(link, comm_mode=1)
        await driver.start()
        req = d.encode(d.read_request(meter.address, 0x00010000))
        for _ in range(4):
            res = await driver.read(meter.address, relays, req)
            if res.ok:
                break
        await driver.close()
        return res

    t_before = max(0.0, time.monotonic() - launched - 1)
    res = asyncio.run(main())
    t_after = time.monotonic() - launched + 1
    assert res.ok, f"{res.failure} {res.deny_code}"
    f = d.decode(res.reply)
    value = d.decode_value(f.di, f.value_bytes)
    lo = Decimal(truth_registers(path, t_before)["registers"][meter.address]["forward"][0])
    hi = Decimal(truth_registers(path, t_after)["registers"][meter.address]["forward"][0])
    assert lo <= value <= hi
    assert res.elapsed > 3 * 0.2  # four hops down and up on narrowband PLC take time


def test_the_summary_meter_answers_on_its_own_pty(served):
    sc, path, ports, launched = served
    t_before = max(0.0, time.monotonic() - launched - 1)
    with serial.Serial(ports["summary"], 2400, parity=serial.PARITY_EVEN, timeout=0.2) as port:
        port.write(d.encode(d.read_request(sc.summary_meter.address, 0x00010000)))
        dec = d.Dlt645StreamDecoder()
        frames = []
        end = time.monotonic() + 5
        while not frames and time.monotonic() < end:
            frames = [x for x in dec.feed(port.read(port.in_waiting or 1)) if isinstance(x, d.Dlt645Frame)]
    t_after = time.monotonic() - launched + 1
    assert frames, "the summary meter did not answer"
    value = d.decode_value(0x00010000, frames[0].value_bytes)
    lo = Decimal(truth_registers(path, t_before)["summary_meter"]["forward"])
    hi = Decimal(truth_registers(path, t_after)["summary_meter"]["forward"])
    assert lo <= value <= hi


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    sc = generate(10, "street", seed=1, events=False)
    path = tmp_path / "d.yaml"
    dump(sc, str(path))
    proc = subprocess.Popen([*SIM, "serve", str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    assert line.startswith("module: /dev/")
    assert os.path.exists(line.split()[1])
    proc.terminate()
    assert proc.wait(10) == 0
