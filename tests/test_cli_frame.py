"""`concentrator frame decode`: protocol detection, nested frames, JSON, bad input."""

import json

from click.testing import CliRunner

from concentrator import dlt645
from concentrator.cli import main
from uplink import gdw13761

V7_REPLY = "68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16"
T1_LOGIN = "68 32 00 32 00 68 C9 03 44 04 00 00 02 71 00 00 01 00 88 16"
AFN13_F1 = (
    "68 2F 00 41 04 00 00 00 00 01 00 26 00 00 00 00 61 01 00 00 00 00 13 01 00 02 00 00"
    " 10 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16 32 16"
)


def run(*args, input=None):
    return CliRunner().invoke(main, ["frame", "decode", *args], input=input)


def test_dlt645_reply_shows_meter_and_energy():
    res = run(V7_REPLY)
    assert res.exit_code == 0, res.output
    assert "DL/T 645" in res.output
    assert "000000000161" in res.output
    assert "0.26" in res.output


def test_1376_1_login_is_recognised():
    res = run("--json", T1_LOGIN)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["protocol"] == "Q/GDW 1376.1"
    assert any("4403" in str(v) for _, v in doc["fields"])


def test_645_inside_1376_2_monitor_request_is_decoded_too():
    doc = json.loads(run("--json", AFN13_F1).output)
    assert doc["protocol"] == "Q/GDW 1376.2"
    assert [n["protocol"] for n in doc["nested"]] == ["DL/T 645"]
    assert any("000000000161" in str(v) for _, v in doc["nested"][0]["fields"])


def test_645_inside_1376_1_transparent_forward_is_decoded_too():
    inner = dlt645.encode(dlt645.read_request("000000000161", 0x00010000))
    frame = gdw13761.request(
        gdw13761.Address("4403", 4),
        0x10,
        [gdw13761.unit(0, 1, gdw13761.TransparentForward(port=31, payload=inner))],
        seq=1,
    )
    raw = gdw13761.encode(frame).hex(" ")
    doc = json.loads(run("--json", raw).output)
    assert doc["protocol"] == "Q/GDW 1376.1"
    assert doc["nested"] and doc["nested"][0]["protocol"] == "DL/T 645"


def test_frames_on_stdin_one_per_line_and_0x_prefixes():
    res = run("--json", input=f"{T1_LOGIN}\n0x68,0x61,0x01,0x00,0x00,0x00,0x00,0x68,0x91,0x08,0x33,0x33,0x34,0x33,0x59,0x33,0x33,0x33,0x8A,0x16\n")
    assert res.exit_code == 0, res.output
    docs = json.loads(res.output)
    assert [d["protocol"] for d in docs] == ["Q/GDW 1376.1", "DL/T 645"]


def test_bad_checksum_is_a_clear_failure_not_a_crash():
    bad = V7_REPLY[:-5] + "8B 16"
    res = run(bad)
    assert res.exit_code == 1
    assert "cannot decode" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_odd_hex_is_a_usage_error():
    assert run("68 6").exit_code == 2
