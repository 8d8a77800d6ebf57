"""`carboncp publish-carbon` replays a real trace into a real Mosquitto, retained, with the
trace's timestamps; a replay-clock subscriber receives every hour in order."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from carboncp.runtime.cli import main
from carboncp.runtime.commands.publish_carbon import replay_trace
from carboncp.runtime.signals.carbon import ReplayClock
from carboncp.runtime.signals.mqtt import CarbonSubscriber
from carboncp.runtime.signals.traces import load_carbon_csv

from tests.support.mosquitto import start_mosquitto

TRACE = (
    Path(__file__).resolve().parents[2] / "runtime" / "data" / "carbon" / "DE-LU_2023-09-11_8w.csv"
)


@pytest.fixture
def mosquitto():
    broker = start_mosquitto()
    yield broker
    broker.cleanup()


def test_cli_replays_hours_in_order(mosquitto, capsys):
    trace = load_carbon_csv(TRACE)
    start = int(trace.t_s[5])
    speed = 3600.0  # 1 s per trace hour
    got = []
    sub = CarbonSubscriber(
        mosquitto.url,
        [trace.zone],
        allow_replay=True,
        ttl_s=7200,  # the CLI's replay starts a moment after this clock: allow 2 s of skew
        on_reading=got.append,
    )
    with sub:
        sub.wait_connected(5)
        argv = ["publish-carbon", "--trace", str(TRACE), "--broker", mosquitto.url]
        argv += ["--speed", str(speed), "--start", "2023-09-11T05:00Z", "--count", "3"]
        sub.now_fn = ReplayClock(start, speed)
        assert main(argv) == 0
        assert sub.wait_for(trace.zone, lambda r: r.ts_s == trace.t_s[7], 5)
    assert [r.ts_s for r in got] == [float(t) for t in trace.t_s[5:8]]
    assert [r.gco2_per_kwh for r in got] == pytest.approx(list(trace.gco2_per_kwh[5:8]), abs=1e-3)
    assert all(r.replay and r.kind == "average" for r in got)
    assert sub.error_counts == {}
    err = capsys.readouterr().err
    assert "[3/3]" in err and "published 3 hours" in err

    # retained: a late subscriber gets the last hour, and a live-only one refuses it
    late = CarbonSubscriber(mosquitto.url, [trace.zone], allow_replay=True,
                            now_fn=lambda: float(trace.t_s[7]))  # fmt: skip
    live_only = CarbonSubscriber(mosquitto.url, [trace.zone])
    with late, live_only:
        assert late.wait_for(trace.zone, lambda r: True, 5)
        assert late.current(trace.zone).gco2_per_kwh == pytest.approx(
            trace.gco2_per_kwh[7], abs=1e-3
        )
        live_only.wait_connected(5)
        deadline = threading.Event()
        deadline.wait(0.3)
        assert live_only.latest(trace.zone) is None
        assert live_only.error_counts["replay"] == 1


def test_replay_trace_paces_and_stops():
    trace = load_carbon_csv(TRACE)

    class Pub:
        def __init__(self):
            self.calls = []

        def publish(self, zone, value, ts, **kw):
            self.calls.append((zone, value, ts, kw["replay"]))

    pub, slept, now = Pub(), [], [50.0]

    def sleep(s):
        slept.append(s)
        now[0] += s + 0.25  # an oversleep must not accumulate

    n = replay_trace(trace, pub, zone="DE", speed=3600, count=3, sleep=sleep, clock=lambda: now[0])
    assert n == 3 and [c[2] for c in pub.calls] == [float(t) for t in trace.t_s[:3]]
    assert all(c[3] for c in pub.calls)
    assert slept == pytest.approx([1.0, 0.75])  # one trace hour = 1 s, on a fixed schedule
    stop = threading.Event()
    stop.set()
    assert replay_trace(trace, Pub(), speed=3600, count=5, stop=stop) == 0  # stopped: nothing


def test_cli_wrong_password_exits_2_with_clear_message(tmp_path):
    from tests.support.mosquitto import write_auth

    conf = write_auth(
        tmp_path / "auth", {"grid": "right"}, "user grid\ntopic readwrite carboncp/#\n"
    )
    broker = start_mosquitto(conf)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "carboncp.runtime.cli", "publish-carbon", "--trace", str(TRACE),
             "--broker", broker.url, "--username", "grid", "--password", "wrong", "--count", "1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        broker.cleanup()
    assert proc.returncode == 2
    assert "not authorised: check username/password" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shared_replay_clock_keeps_publisher_and_subscriber_in_step(mosquitto):
    """The demo's way: one ReplayClock drives both the replay thread and the subscriber."""
    from carboncp.runtime.signals.mqtt import CarbonPublisher

    trace = load_carbon_csv(TRACE)
    clock = ReplayClock(float(trace.t_s[10]), speed=7200.0)  # 0.5 s per trace hour
    got = []
    # ttl 2 trace hours = 1 s of wall time for delivery on a loaded machine
    sub = CarbonSubscriber(mosquitto.url, [trace.zone], allow_replay=True, now_fn=clock,
                           ttl_s=7200, on_reading=got.append)  # fmt: skip
    with sub, CarbonPublisher(mosquitto.url) as pub:
        sub.wait_connected(5)
        stop = threading.Event()
        n = replay_trace(trace, pub, count=4, replay_clock=clock, stop=stop)
        assert n == 4
        assert sub.wait_for(trace.zone, lambda r: r.ts_s == trace.t_s[13], 5)
    assert [r.ts_s for r in got] == [float(t) for t in trace.t_s[10:14]]
    assert sub.error_counts == {}
