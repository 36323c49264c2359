"""Command authentication (MAC in PW, Tp/PFC replay guard), ERC20 recording and the key store."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
from datetime import datetime, timedelta

import pytest

from concentrator.keystore import FileKeyStore, KeyStoreError, MemoryKeyStore, MeterPassword
from concentrator.store import MeterRecord
from simulator.master import MasterError
from tests.test_uplink import (
    KEY,
    FakeServices,
    make_client,
    make_store,
    master_at,
    running,
    until,
)
from uplink import gdw13761 as g
from uplink import security as sec

K1 = bytes(range(32))                    # the key of terminal 4403:1
K2 = bytes(range(100, 132))              # the key of terminal 4403:2 (another terminal)
NOW = datetime(2024, 5, 10, 8, 0, 30)


def command(pfc: int = 1, *, afn: int = 0x05, units=None, sent: datetime = NOW, delay: int = 5,
            msa: int = 1) -> g.Frame13761:
    units = units or [g.unit(0, 31, g.TerminalClock(datetime(2024, 5, 10, 9, 0)))]
    tp = g.Tp(pfc, g.DayTime(sent.day, sent.hour, sent.minute, sent.second), delay)
    return g.request(g.Address("4403", 1, msa), afn, units, 3, tp=tp)


class Kv:
    def __init__(self) -> None:
        self.data: dict = {}

    def kv_get(self, key, default=None):
        return self.data.get(key, default)

    def kv_set(self, key, value) -> None:
        self.data[key] = json.loads(json.dumps(value))


# --- the MAC ----------------------------------------------------------------------------------

def test_mac_is_hmac_sha256_of_the_user_data_with_pw_zeroed_cut_to_16_bytes():
    f = command()
    raw_unsigned = g.encode(f)                       # PW is 16 zero bytes by default
    expected = hmac.new(K1, raw_unsigned[6:-2], hashlib.sha256).digest()[:16]
    signed = sec.sign(f, K1)
    assert signed.pw == expected
    raw = g.encode(signed)
    # On the wire PW sits right before the 6-byte Tp, inside the checksummed user data.
    assert raw[-2 - 6 - 16:-2 - 6] == expected
    assert sec.verify(g.decode(raw), K1)


def test_mac_covers_data_units_tp_and_address_and_depends_on_the_key():
    signed = sec.sign(command(), K1)
    unit = signed.units[0]
    flipped = dataclasses.replace(unit, data=bytes([unit.data[0] ^ 1]) + unit.data[1:])
    assert not sec.verify(dataclasses.replace(signed, units=(flipped,)), K1)
    assert not sec.verify(dataclasses.replace(signed, tp=dataclasses.replace(signed.tp, pfc=2)),
                          K1)
    assert not sec.verify(dataclasses.replace(signed, address=g.Address("4403", 2, 1)), K1)
    assert not sec.verify(signed, K2)
    with pytest.raises(g.EncodeError):
        sec.sign(g.request(g.Address("4403", 1), 0x0C, [g.unit(0, 2)], 0), K1)  # no PW field


@pytest.mark.parametrize(("pfc", "last", "ok"), [
    (11, 10, True), (0, 255, True), (137, 10, True), (138, 10, False),
    (10, 10, False), (9, 10, False), (255, 0, False), (127, 0, True)])
def test_pfc_increase_with_wrap_around(pfc, last, ok):
    assert sec.pfc_after(pfc, last) is ok


# --- the guard --------------------------------------------------------------------------------

def test_guard_accepts_a_fresh_signed_command_and_refuses_its_replay():
    guard = sec.CommandGuard(K1, kv=Kv())
    f = sec.sign(command(7), K1)
    assert guard.check(f, NOW).ok
    assert guard.check(f, NOW).reason == "replayed"
    assert guard.last_pfc == {1: 7}


@pytest.mark.parametrize(("frame", "reason"), [
    (lambda: command(1), "no-mac"),                                           # unsigned
    (lambda: sec.sign(command(1), K2), "bad-mac"),                            # other key
    (lambda: sec.sign(dataclasses.replace(
        command(1), seq=g.Seq(3), tp=None), K1), "no-tp"),
    (lambda: sec.sign(command(1, afn=0x04, units=[g.unit(0, 10, g.MeterArchive(()))],
                              sent=NOW - timedelta(minutes=6)), K1), "expired"),
    (lambda: sec.sign(command(1, afn=0x04, units=[g.unit(0, 10, g.MeterArchive(()))],
                              sent=NOW - timedelta(minutes=3), delay=2), K1), "expired"),
    (lambda: sec.sign(command(1, afn=0x04, units=[g.unit(0, 10, g.MeterArchive(()))],
                              sent=NOW - timedelta(minutes=30), delay=255), K1), "expired"),
])
def test_guard_refuses_unauthenticated_altered_and_old_commands(frame, reason):
    v = sec.CommandGuard(K1).check(frame(), NOW)
    assert not v.ok and v.reason == reason


def test_time_set_passes_a_wrong_terminal_clock_but_not_an_old_pfc():
    guard = sec.CommandGuard(K1)
    far = NOW + timedelta(days=3, hours=5)            # the terminal's clock is off by days
    assert guard.check(sec.sign(command(5), K1), far).ok
    assert guard.check(sec.sign(command(4), K1), far).reason == "old-pfc"


def test_no_key_refuses_and_require_mac_off_accepts_unsigned():
    assert sec.CommandGuard(None).check(sec.sign(command(), K1), NOW).reason == "no-key"
    assert sec.CommandGuard(None, require_mac=False).check(command(), NOW).ok
    # Reads carry no PW and are never checked.
    read = g.request(g.Address("4403", 1), 0x0C, [g.unit(0, 2)], 0)
    assert sec.CommandGuard(K1).check(read, NOW).ok


def test_last_pfc_per_master_survives_a_restart():
    kv = Kv()
    first = sec.CommandGuard(K1, kv=kv)
    assert first.check(sec.sign(command(200, msa=1), K1), NOW).ok
    assert first.check(sec.sign(command(3, msa=2), K1), NOW).ok      # MSA 2 counts on its own
    again = sec.CommandGuard(K1, kv=kv)                               # after a restart
    assert again.check(sec.sign(command(150, msa=1), K1), NOW).reason == "old-pfc"
    assert again.check(sec.sign(command(201, msa=1), K1), NOW).ok
    assert again.check(sec.sign(command(3, msa=2), K1), NOW).reason == "old-pfc"
    assert again.last_pfc == {1: 201, 2: 3}


# --- with the master station ------------------------------------------------------------------

@pytest.fixture
async def secured(tmp_path):
    store = make_store(tmp_path)
    store.upsert_meter(MeterRecord("000000000001", point=1))
    services = FakeServices()
    keys = MemoryKeyStore()
    keys.set_terminal_key("4403", 1, K1)
    async with master_at(tmp_path, keys=keys) as m:
        client = make_client(store, m.port, services=services)
        client.guard = sec.guard_for(keys, "4403", 1, kv=store)
        async with running(client):
            await m.wait_login(KEY)
            yield m, client, store, services


def erc20(store) -> list:
    return [e for e in store.events_since(0, 1000) if e.erc == sec.ERC_AUTH]


async def test_signed_time_set_and_archive_change_work(secured):
    m, client, store, services = secured
    when = datetime(2024, 5, 10, 9, 30)
    assert await m.set_time(KEY, when)
    assert ("set_time", when) in services.calls
    assert await m.set_archive(KEY, [g.MeterRecord(2, 2, "000000000002")])
    assert store.meter("000000000002") is not None
    assert erc20(store) == [] and client.stats["auth_refused"] == 0
    assert m.violations == []


def _flip_a_bit(f: g.Frame13761) -> g.Frame13761:
    """One bit of the meter address in the archive record (byte 8 of AFN04 F10), as an attacker
    on the path would change it (the CS is recomputed; only the MAC can tell)."""
    u = f.units[0]
    return dataclasses.replace(f, units=(dataclasses.replace(
        u, data=u.data[:8] + bytes([u.data[8] ^ 0x01]) + u.data[9:]),))


async def test_replayed_altered_old_foreign_and_unsigned_commands_are_denied(secured, caplog):
    m, client, store, services = secured
    when = datetime(2024, 5, 10, 9, 30)
    archive = [g.unit(0, 10, g.MeterArchive((g.MeterRecord(3, 3, "000000000003"),)))]
    assert await m.set_time(KEY, when)
    genuine = m.last_request(KEY)
    services.calls.clear()
    other = MemoryKeyStore()
    other.set_terminal_key("4403", 1, K2)           # the key of another terminal
    caplog.set_level(logging.WARNING, logger="uplink.client")

    attacks = {
        "replayed": dict(afn=0x05, units=[], kw={"resend": genuine}),
        "bad-mac": dict(afn=0x04, units=archive, kw={"prepare": _flip_a_bit}),
        "expired": dict(afn=0x04, units=archive,
                        kw={"tp_delay": 5, "tp_age": timedelta(minutes=10)}),
    }
    for reason, a in attacks.items():
        with pytest.raises(MasterError, match="denied"):
            await m.ask(KEY, a["afn"], a["units"], **a["kw"])
        assert erc20(store)[-1].detail["reason"] == reason
    keys = m.keys
    for reason, swap in (("bad-mac", other), ("no-mac", None)):
        m.keys = swap
        try:
            with pytest.raises(MasterError, match="denied"):
                await m.set_archive(KEY, [g.MeterRecord(3, 3, "000000000003")])
        finally:
            m.keys = keys
        assert erc20(store)[-1].detail["reason"] == reason

    # Nothing changed, every refusal was logged and recorded as ERC20 for the master.
    assert services.calls == []
    assert store.meter("000000000003") is None
    assert store.meter("000000000002") is None          # what the flipped bit asked for
    assert client.stats["auth_refused"] == 5
    assert len(erc20(store)) == 5
    security_lines = [r for r in caplog.records if "SECURITY" in r.getMessage()]
    assert len(security_lines) == 5
    assert all(K1.hex() not in r.getMessage() and K2.hex() not in r.getMessage()
               for r in caplog.records)
    await until(lambda: sum(1 for u in m.uploads(KEY) if u["afn"] == 0x0E
                            for r in u["value"]["records"] if r["erc"] == 20) == 5)
    # The genuine master still gets through afterwards.
    assert await m.set_archive(KEY, [g.MeterRecord(3, 3, "000000000003")])
    assert store.meter("000000000003") is not None


async def test_terminal_restart_keeps_refusing_an_old_command(tmp_path):
    store = make_store(tmp_path)
    keys = MemoryKeyStore()
    keys.set_terminal_key("4403", 1, K1)
    async with master_at(tmp_path, keys=keys) as m:
        client = make_client(store, m.port)
        client.guard = sec.guard_for(keys, "4403", 1, kv=store)
        async with running(client):
            await m.wait_login(KEY)
            assert await m.reset(KEY, 4)
            old = m.last_request(KEY)
        client = make_client(store, m.port)             # restarted daemon, same store
        client.guard = sec.guard_for(keys, "4403", 1, kv=store)
        async with running(client):
            await m.wait_login(KEY)
            with pytest.raises(MasterError, match="denied"):
                await m.ask(KEY, 0x01, [], resend=old)
            assert erc20(store)[-1].detail["reason"] == "old-pfc"
            assert await m.reset(KEY, 4)                 # the master's PFC moved on: accepted


# --- the key store ----------------------------------------------------------------------------

def _write(path, data, mode):
    path.write_text(json.dumps(data))
    os.chmod(path, mode)


def test_file_key_store_loads_a_private_file_and_refuses_a_readable_one(tmp_path):
    p = tmp_path / "keys.json"
    data = {"terminals": {"4403:1": K1.hex()},
            "meters": {"000000000161": {"level": 2, "password": "123456"}}}
    _write(p, data, 0o600)
    ks = FileKeyStore(p)
    assert ks.terminal_key("4403", 1) == K1
    assert ks.terminal_key("4403", 2) is None
    pw = ks.meter_password("000000000161")
    assert pw == MeterPassword(2, "123456") and pw.wire() == bytes.fromhex("02563412") + bytes(4)
    assert "123456" not in repr(pw) and K1.hex() not in repr(ks)
    for mode in (0o644, 0o640, 0o606, 0o620):
        os.chmod(p, mode)
        with pytest.raises(KeyStoreError, match="chmod 600"):
            FileKeyStore(p)


def test_file_key_store_errors_never_echo_key_material(tmp_path):
    p = tmp_path / "keys.json"
    _write(p, {"terminals": {"4403:1": "zz" + K1.hex()}}, 0o600)
    with pytest.raises(KeyStoreError) as exc:
        FileKeyStore(p)
    assert K1.hex() not in str(exc.value)
    _write(p, {"terminals": {"4403:1": K1.hex()[:16]}}, 0o600)          # 8 bytes: too short
    with pytest.raises(KeyStoreError, match="16..64 bytes"):
        FileKeyStore(p)
    p.write_text('{"terminals": {"4403:1": "' + K1.hex() + '"')         # broken JSON
    with pytest.raises(KeyStoreError) as exc:
        FileKeyStore(p)
    assert K1.hex() not in str(exc.value)
    with pytest.raises(KeyStoreError, match="cannot open"):
        FileKeyStore(tmp_path / "missing.json")


def test_saved_key_store_is_0600_and_round_trips(tmp_path):
    p = tmp_path / "keys.json"
    ks = FileKeyStore(p, create=True)
    ks.set_terminal_key("4403", 7, K2)
    ks.set_meter_password("000000000161", MeterPassword(4, "000001", "12345678"))
    ks.save()
    assert os.stat(p).st_mode & 0o777 == 0o600
    again = FileKeyStore(p)
    assert again.terminal_key("4403", 7) == K2
    assert again.meter_password("000000000161") == MeterPassword(4, "000001", "12345678")
    with pytest.raises(KeyStoreError):
        ks.set_terminal_key("4403", 8, b"short")


async def test_a_flood_of_forged_commands_is_denied_but_stores_few_erc20(secured, monkeypatch):
    m, client, store, services = secured
    monkeypatch.setattr("uplink.client._ERC20_PER_HOUR", 2)
    keys, m.keys = m.keys, None                      # the forger has no key
    try:
        for _ in range(4):
            with pytest.raises(MasterError, match="denied"):
                await m.reset(KEY, 1)
    finally:
        m.keys = keys
    assert client.stats["auth_refused"] == 4
    assert len(erc20(store)) == 2
    assert not any(c[0] == "reset" for c in services.calls)
