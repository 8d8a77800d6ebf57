"""`carboncp build` and `carboncp evaluate` share their replay flags and refuse the same bad
values with one line naming the flag (exit 2), before any work starts."""

from __future__ import annotations

import pytest
from carboncp.runtime.cli import main as cli_main

BAD = [
    ["--events-per-hour", "0"], ["--events-per-hour", "-3"], ["--days", "nan"],
    ["--days", "inf"], ["--days", "0"], ["--seed", "-1"], ["--alpha", "1.5"],
]  # fmt: skip


@pytest.mark.parametrize("flags", BAD)
def test_evaluate_refuses(tmp_path, capsys, flags) -> None:
    argv = ["evaluate", str(tmp_path), "--device-carbon", "a.csv", "--server-carbon", "b.csv",
            "--bandwidth", "t.txt", "--out", str(tmp_path / "out"), *flags]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags", BAD)
def test_build_refuses(tmp_path, capsys, flags) -> None:
    assert cli_main(["build", "--out", str(tmp_path / "b"), *flags]) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()  # refused before any work


def test_profile_refuses_zero_repeats(tmp_path, capsys) -> None:
    assert cli_main(["profile", str(tmp_path), "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err
