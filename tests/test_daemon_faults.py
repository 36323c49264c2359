"""The daemon keeps serving when the carrier module's port is missing."""

import asyncio

from concentrator import config as cfgmod
from concentrator.clock import SystemClock
from concentrator.control import ControlClient
from concentrator.daemon import Daemon


def test_missing_module_port_is_reported_and_the_cli_still_answers(tmp_path):
    cfg = cfgmod.loads(f"""
paths: {{etc: {tmp_path}, state: {tmp_path}, runtime: {tmp_path}}}
terminal: {{district: "4403", address: 7}}
module: {{port: {tmp_path}/no-such-tty, channel: hplc}}
store: {{path: {tmp_path}/c.db}}
uplink: {{primary: "127.0.0.1:9", tls: {{enabled: false}}}}
control: {{socket: {tmp_path}/control.sock, group: root, audit_log: {tmp_path}/audit.jsonl}}
""", "test.yaml")

    async def main():
        stop = asyncio.Event()
        daemon = Daemon(cfg, clock=SystemClock())
        job = asyncio.create_task(daemon.run(stop))
        status = None
        for _ in range(50):
            await asyncio.sleep(0.1)
            try:
                status = await asyncio.to_thread(
                    ControlClient(tmp_path / "control.sock", timeout=5).request, "status", {})
                if status["faults"]:
                    break
            except Exception:
                continue
        stop.set()
        await asyncio.wait_for(job, 20)
        return status

    status = asyncio.run(main())
    assert status is not None, "control socket never answered"
    assert status["module"]["connected"] is False
    assert "module port" in status["faults"]
    assert "no-such-tty" in status["faults"]["module port"]
