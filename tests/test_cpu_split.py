"""The trial's CPU split: work done in the concentrator's packages is told from the simulator's."""

import time

from concentrator import dlt645
from mesh.links import distribute_blame
from simulator.cpu_split import CpuSplit, _side_of


def _burn(fn, seconds: float = 0.25) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        fn()


def test_files_are_told_apart_by_package_and_shared_codecs_count_for_their_caller():
    cache: dict = {}
    import mesh.routes
    import plc_driver.gdw13762
    import simulator.channel
    assert _side_of(mesh.routes.__file__, cache) == "concentrator"
    assert _side_of(simulator.channel.__file__, cache) == "simulator"
    assert _side_of(dlt645.__file__, cache) is None  # the meters' codec serves both sides
    assert _side_of(plc_driver.gdw13762.__file__, cache) is None
    assert _side_of(time.__file__ if hasattr(time, "__file__") else "<frozen>", cache) is None


def test_cpu_spent_in_mesh_code_is_the_concentrators_and_codec_calls_follow_the_caller():
    split = CpuSplit(interval=0.001)
    split.start()
    try:
        split.phase("mesh")
        hops = [0.9] * 400  # one call is long: the test's own loop is a small share
        _burn(lambda: distribute_blame(hops))
        split.phase("codec")  # a codec called from outside both sides: neither side's
        frame = dlt645.read_request("000000000001", 0x05060101)
        _burn(lambda: dlt645.encode(frame))
    finally:
        split.stop()
    mesh = split.counts["mesh"]
    assert mesh.get("concentrator", 0) > 0.8 * sum(mesh.values())
    assert mesh.get("simulator", 0) == 0
    codec = split.counts["codec"]
    assert codec.get("concentrator", 0) + codec.get("simulator", 0) < 0.2 * sum(codec.values())
    assert split.concentrator_share("mesh") > 0.9
    assert split.report()["mesh"]["concentrator_tasks"]  # by the outermost concentrator frame
