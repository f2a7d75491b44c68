"""The start barrier: evaluators that prepared at different times start their timed loops together, in any order of
arrival; a stale marker releases nobody; a peer that never comes fails the wait naming it; real evaluators meet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from abtest_api.errors import UserError
from abtest_evaluator.barrier import FOLDER, STALE_SECONDS, StartBarrier, marker_name, peer_ids
from helpers import INPUT_FLAGS, read_json

PEERS = ["resnet", "vit", "shufflenet"]


def meet(tmp_path, arrivals: dict[str, float], timeout: float = 20) -> dict:
    """Each peer arrives after its delay (in a thread of its own) and waits; what each one's wait returned or raised."""
    out = {}

    def arrive(peer, delay):
        time.sleep(delay)
        try:
            out[peer] = StartBarrier(tmp_path, peer, list(arrivals), timeout).wait()
        except UserError as err:
            out[peer] = err

    threads = [threading.Thread(target=arrive, args=item) for item in arrivals.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return out


@pytest.mark.parametrize("order", [(0.0, 0.4, 0.8), (0.8, 0.0, 0.4), (0.4, 0.8, 0.0)], ids=["in order", "last first", "middle first"])
def test_peers_arriving_in_any_order_are_released_together_after_the_last(tmp_path, order):
    arrivals = dict(zip(PEERS, order))
    released = meet(tmp_path, arrivals)
    last = max(arrivals, key=arrivals.get)
    times = [released[p].released_at for p in PEERS]
    assert max(times) - min(times) < 0.2  # together (the poll is 20 ms)
    assert min(times) >= released[last].ready_at  # and not before the last one was ready
    for peer in PEERS:
        assert released[peer].waited_seconds == pytest.approx(arrivals[last] - arrivals[peer], abs=0.3)
    assert sorted(os.listdir(tmp_path / FOLDER)) == ["go"]  # the markers left with their waiters


def test_a_stale_marker_of_an_earlier_attempt_releases_nobody(tmp_path):
    """vit waited, then its pod was killed without a chance to clean up: its marker stopped being rewritten. resnet must
    not take it for a waiting vit."""
    folder = tmp_path / FOLDER
    folder.mkdir()
    stale = folder / marker_name("vit")
    stale.write_text('{"peer": "vit"}')
    old = time.time() - STALE_SECONDS - 5
    os.utime(stale, (old, old))
    with pytest.raises(UserError) as err:
        StartBarrier(tmp_path, "resnet", ["resnet", "vit"], timeout=1.5).wait()
    assert "vit not ready after 1.5 s (spec.startTimeoutSeconds" in str(err.value)
    assert not (folder / "go").exists() and not (folder / marker_name("resnet")).exists()


def test_a_fresh_marker_is_kept_fresh_by_its_waiter(tmp_path):
    """A peer that waits longer than the staleness limit still counts: its heartbeat rewrites its marker."""
    released = meet(tmp_path, {"resnet": 0.0, "vit": STALE_SECONDS + 2})
    assert released["resnet"].waited_seconds > STALE_SECONDS and not isinstance(released["vit"], UserError)


def test_the_timeout_names_every_peer_that_never_came(tmp_path):
    peers = peer_ids(["resnet", "vit"], 2)
    assert peers == ["resnet#0/2", "resnet#1/2", "vit#0/2", "vit#1/2"]
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        StartBarrier(tmp_path, "resnet#0/2", peers, timeout=1).wait()
    assert 1 <= time.monotonic() - started < 3
    assert str(err.value).startswith("start barrier: resnet#1/2, vit#0/2, vit#1/2 not ready after 1 s")


def test_a_peer_arriving_after_the_release_starts_at_once(tmp_path):
    """A pod restarted mid-run (an eviction) finds its peers past the barrier: waiting for them would wait forever."""
    meet(tmp_path, {"resnet": 0.0, "vit": 0.0})
    late = StartBarrier(tmp_path, "vit", ["resnet", "vit"], timeout=30).wait()
    assert late.by_go and late.waited_seconds < 0.5


def test_one_not_among_its_peers_is_told_to_list_every_model(tmp_path):
    with pytest.raises(UserError, match="vit is not one of its peers resnet, shufflenet; list every model in --start-with"):
        StartBarrier(tmp_path, "vit", ["resnet", "shufflenet"], timeout=1)


def test_sigterm_while_waiting_removes_the_marker(tmp_path):
    """An evicted waiter (SIGTERM) takes its marker with it, so no peer is released by a pod that is going away."""
    code = f"""
from abtest_evaluator.barrier import StartBarrier
StartBarrier({str(tmp_path)!r}, "vit", ["resnet", "vit"], timeout=60).wait()
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    marker = tmp_path / FOLDER / marker_name("vit")
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no marker after 30 s"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert not marker.exists()


def test_two_evaluators_prepared_apart_start_their_timed_loops_together(tmp_path, trained_models):
    """Real `abtest evaluate` processes: vit starts 3 s after resnet, yet their timed loops start within a fraction of a
    second, and metrics.json records the wait."""
    procs = {}
    for name, arch, delay in (("resnet", "timm/resnet10t", 0), ("vit", "timm/test_vit", 3)):
        time.sleep(delay)
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "abtest_operator.cli", "evaluate", "--model", arch, "--checkpoint", trained_models[arch],
             "--dataset", "digits", *INPUT_FLAGS, "--device", "cpu", "--workers", "0", "--threads", "1", "--name", name,
             "--start-with", "resnet,vit", "--out", str(tmp_path / name)],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    for proc in procs.values():
        assert proc.wait(300) == 0, proc.stderr.read()
    resnet, vit = (read_json(tmp_path / name / "metrics.json") for name in procs)
    assert abs(resnet["loop_started_at"] - vit["loop_started_at"]) < 0.5
    assert resnet["start_barrier"]["peers"] == ["resnet", "vit"] and resnet["start_barrier"]["waited_seconds"] > 1.5
    assert resnet["ready_at"] <= resnet["loop_started_at"] and resnet["start_barrier"]["timeout_seconds"] == 600


def test_an_evaluator_whose_peer_never_comes_exits_2_naming_it(tmp_path, trained_models):
    arch = "timm/resnet10t"
    proc = subprocess.run(
        [sys.executable, "-m", "abtest_operator.cli", "evaluate", "--model", arch, "--checkpoint", trained_models[arch],
         "--dataset", "digits", *INPUT_FLAGS, "--device", "cpu", "--workers", "0", "--name", "resnet",
         "--start-with", "resnet,vit", "--start-timeout", "2", "--out", str(tmp_path / "resnet")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: start barrier: vit not ready after 2 s")
    assert not (tmp_path / "resnet").exists() or not any((tmp_path / "resnet").iterdir())
