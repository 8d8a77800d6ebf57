"""BridgeReader's buffer, energy integration and counters, fed frames without a port."""

from __future__ import annotations

import pytest
from carboncp.firmware_bridge import protocol
from carboncp.firmware_bridge.host import BridgeError, BridgeReader, _Stream


def _reader(rate_hz: int = 1000, buffer_s: float = 1.0) -> BridgeReader:
    def no_port(*_a, **_k):
        raise OSError("no port in this test")

    r = BridgeReader("test://", rate_hz=rate_hz, serial_factory=no_port, buffer_s=buffer_s)
    r._stream = _Stream(1 << 30, rate_hz)
    return r


def _feed(r: BridgeReader, seqs, power_mw_of, t_host0: float = 100.0, latency_s: float = 0.001):
    """Frames stamped 1 ms apart; each arrives `latency_s` after it was taken."""
    data = b"\x00"
    arrivals = []
    for i in seqs:
        uw = round(power_mw_of(i) * 1000)
        data = protocol.encode_sample(i, 1000 * i, 5000, uw // 5, uw)
        for msg in r._decoder.feed(b"\x00" + data):
            r._dispatch(msg, t_host0 + i / 1000 + latency_s)
        arrivals.append(t_host0 + i / 1000 + latency_s)
    return arrivals


def test_energy_of_a_linear_ramp_is_exact_and_clamped_at_edges():
    r = _reader()
    _feed(r, range(501), lambda i: 1000.0 + 2.0 * i)  # 1 W rising 2 mW per ms
    samples = r.samples_between(-1e9, 1e9)
    t_first, t_last = samples[0].host_t_s, samples[-1].host_t_s
    assert t_last - t_first == pytest.approx(0.5, abs=1e-9)  # 1 ms spacing preserved
    # a window inside the data: trapezoid is exact on a linear ramp, edges interpolated
    a, b = t_first + 0.1234, t_first + 0.4321
    p = lambda t: 1000.0 + 2000.0 * (t - t_first)  # noqa: E731 - mW at host time t
    assert r.energy_j(a, b) == pytest.approx((p(a) + p(b)) / 2 * (b - a) / 1000, rel=1e-9)
    # overhanging the start a little: power held at the first sample
    e = r.energy_j(t_first - 0.01, t_first + 0.01)
    assert e == pytest.approx((1000 * 0.01 + (1000 + p(t_first + 0.01)) / 2 * 0.01) / 1000)
    assert r.energy_j(a, a) == 0.0
    with pytest.raises(BridgeError, match="no samples around"):
        r.energy_j(t_last + 1.0, t_last + 2.0)
    with pytest.raises(BridgeError, match="hole"):  # overhangs the data by 0.3 s
        r.energy_j(t_last - 0.1, t_last + 0.3)
    assert r.energy_j(t_last - 0.1, t_last + 0.3, max_gap_s=1.0) > 0
    with pytest.raises(ValueError):
        r.energy_j(b, a)


def test_hole_inside_the_window_is_an_error_not_an_interpolation():
    r = _reader()
    _feed(r, [*range(100), *range(400, 500)], lambda i: 1000.0)  # 300 ms lost in the middle
    s = r.samples_between(-1e9, 1e9)
    with pytest.raises(BridgeError, match="hole"):
        r.energy_j(s[50].host_t_s, s[150].host_t_s)
    assert r.stats.lost_samples == 300
    # windows on either side of the hole are fine
    assert r.energy_j(s[10].host_t_s, s[90].host_t_s) == pytest.approx(0.08, rel=1e-6)


def test_samples_between_is_inclusive_and_latest():
    r = _reader()
    _feed(r, range(10), lambda i: 500.0)
    s = r.samples_between(-1e9, 1e9)
    assert [x.seq for x in s] == list(range(10))
    assert r.samples_between(s[2].host_t_s, s[5].host_t_s) == s[2:6]
    assert r.latest() == s[-1]
    assert (s[0].bus_voltage_mv, s[0].power_mw, s[0].current_ma) == (5000.0, 500.0, 100.0)


def test_lost_samples_counted_and_ring_buffer_bounded():
    r = _reader(buffer_s=1.0)  # capacity 1000 samples
    kept = [i for i in range(5000) if i % 10 != 3]
    _feed(r, kept, lambda i: 1.0)
    st = r.stats
    assert st.lost_samples == 5000 - len(kept)
    assert st.frames_ok == len(kept)
    assert len(r._samples) <= 2000
    assert r.samples_between(-1e9, 1e9)[-1].seq == kept[-1]


def test_empty_reader_raises_clear_error():
    r = _reader()
    assert r.latest() is None
    with pytest.raises(BridgeError, match="no samples"):
        r.energy_j(0.0, 1.0)
    r.close()
    r.close()


def test_bad_anchor_is_replaced_after_a_run_of_refused_frames():
    r = _reader()
    _feed(r, range(5), lambda i: 1.0)
    # a frame from far in the future (as a CRC escape could produce) becomes the anchor...
    for msg in r._decoder.feed(b"\x00" + protocol.encode_sample(30000, 1000 * 30000, 1, 1, 1)):
        r._dispatch(msg, 100.0 + 5 / 1000 + 0.001 + 30.0)
    # ...then genuine frames look old; after a run of them the reader starts over
    _feed(r, range(5, 200), lambda i: 1.0, t_host0=130.0)
    st = r.stats
    assert st.reanchors == 1
    assert r.latest().seq > 100
