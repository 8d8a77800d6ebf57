"""Device profile TOMLs with values of the wrong type: a ConfigError naming the key (exit 2),
never a TypeError/ValueError traceback (radio a list, a measured profile's scale a string)."""

from __future__ import annotations

from pathlib import Path

import pytest
from carboncp.runtime.cli import main as cli_main
from carboncp.runtime.errors import ConfigError
from carboncp.tooling.profile import load_device_profile

GOOD = 'p_active_mw = 5000\np_idle_mw = 2000\nradio = "lte"\nbattery_wh = 10\n'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (GOOD.replace('"lte"', "[1, 2]"), "'radio'"),
        (GOOD.replace('"lte"', "{ a = 1 }"), "'radio'"),
        (GOOD + "[latency]\nmeasured = true\nfallback_scale = 'x'\n", "'latency.fallback_scale'"),
        (GOOD + "[latency]\nmeasured = true\nreference_full_model_ms = 'x'\n",
         "'latency.reference_full_model_ms'"),
        (GOOD + "[latency]\nreference_model = 3\n", "'latency.reference_model'"),
        (GOOD + "[server]\nreference_model = [1]\n", "'server.reference_model'"),
        (GOOD.replace("battery_wh = 10", "battery_wh = nan"), "'battery_wh'"),
        (GOOD.replace("battery_wh = 10", "battery_wh = inf"), "'battery_wh'"),
    ],
)  # fmt: skip
def test_wrong_types_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "dev.toml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        load_device_profile(p)


def test_profile_command_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    from tests.support.decision import make_bundle

    root = make_bundle(tmp_path / "b")
    p = tmp_path / "dev.toml"
    p.write_text(GOOD.replace('"lte"', "[1, 2]"), encoding="utf-8")
    assert cli_main(["profile", str(root), "--device-profile", str(p)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "'radio'" in err and len(err.strip().splitlines()) == 1
