"""`concentrator-sim generate | import | truth | draw` from a user's point of view."""

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from simulator.cli import main
from simulator.scenario import load

IEEE = "/work/shared/data/lv-feeders/ieee-european-lv"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_generate_writes_a_loadable_scenario(tmp_path):
    out = tmp_path / "d.yaml"
    r = run("generate", "--meters", 150, "--layout", "flats", "--seed", 3, "--channel", "dual", "-o", out)
    assert r.exit_code == 0, r.output
    sc = load(out)
    assert len(sc.meters) == 150 and sc.channel == "dual" and sc.collectors
    r2 = run("generate", "--meters", 150, "--layout", "flats", "--seed", 3, "--channel", "dual",
             "-o", tmp_path / "e.yaml")
    assert r2.exit_code == 0
    assert out.read_text() == (tmp_path / "e.yaml").read_text()


def test_generate_rejects_out_of_range_sizes(tmp_path):
    r = CliRunner().invoke(main, ["generate", "--meters", "5000", "-o", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and "5000" in r.output


def test_import_then_truth_json(tmp_path):
    out = tmp_path / "ieee.yaml"
    r = run("import", IEEE, "-o", out)
    assert r.exit_code == 0, r.output
    assert "55 meters" in r.output and "906 buses" in r.output
    r = run("truth", out, "--at", "2024-03-01T19:30:00", "--json")
    assert r.exit_code == 0
    tr = json.loads(r.output)
    assert tr["at"] == "2024-03-01T19:30:00"
    assert {"links", "nodes", "registers"} <= set(tr)
    meters = [n for n in tr["nodes"] if n["kind"] == "meter"]
    assert len(meters) == 55 and all(n["hops"] for n in meters)
    link = tr["links"][0]
    assert set(link) == {"src", "dst", "p", "medium"} and 0.5 <= link["p"] <= 1
    assert len(tr["registers"]["000000000001"]["forward"]) == 5
    r = run("truth", out, "--at", "20:00")
    assert "55/55" in r.output


def test_truth_reports_a_bad_scenario_by_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntransformer: {node: T}\nconcentrator: {address: '990000000001'}\n"
                   "junctions: [[T, 0, 0]]\nmeters:\n- {address: '000000000001', node: T, phase: Q}\n")
    r = CliRunner().invoke(main, ["truth", str(bad)])
    assert r.exit_code == 1
    assert "meters[0].phase" in r.output


def test_draw_svg_and_png(tmp_path):
    sc = tmp_path / "f.yaml"
    assert run("generate", "--meters", 60, "--layout", "feeder", "-o", sc).exit_code == 0
    svg = tmp_path / "f.svg"
    assert run("draw", sc, "-o", svg, "--at", "20:00").exit_code == 0
    text = svg.read_text()
    assert text.startswith("<svg") and "concentrator" in text and " m</text>" in text
    assert text.count("<circle") >= 60
    png = tmp_path / "f.png"
    assert run("draw", sc, "-o", png).exit_code == 0
    img = Image.open(png)
    assert img.size[0] >= 800 and len(img.getcolors(1 << 16) or []) > 5
    r = CliRunner().invoke(main, ["draw", str(sc), "-o", str(Path(tmp_path) / "f.gif")])
    assert r.exit_code == 1
