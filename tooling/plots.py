"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_plots(
    out: Path,
    replay: Any,
    te: np.ndarray,
    choices: dict[str, np.ndarray],
    sets: dict[str, dict[str, Any]],
    costs: Any,
    cov_vs_alpha: list[dict[str, float]],
    alpha: float,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    days = (replay.t_s[te] - replay.t_s[te][0]) / 86400.0
    rows = np.arange(len(te))
    paths = []

    fig, ax = plt.subplots(figsize=(9, 5))
    for name, ch in choices.items():
        style = "-" if name.startswith("carboncp") else "--"
        ax.plot(days, np.cumsum(costs.carbon_g[te][rows, ch]), style, label=name, lw=1.2)
    ax.set_xlabel("days into the test period")
    ax.set_ylabel("cumulative operational carbon (gCO2eq)")
    ax.set_title("Cumulative carbon per policy")
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "cumulative_carbon.png"))

    fig, ax1 = plt.subplots(figsize=(9, 5))
    ax1.plot(days, replay.x_true[te, 4], color="tab:red", lw=0.8, label="device zone I_d")
    ax1.plot(days, replay.x_true[te, 5], color="tab:green", lw=0.8, label="server zone I_s")
    ax1.set_ylabel("grid carbon intensity (gCO2eq/kWh)")
    ax1.set_xlabel("days into the test period")
    ax2 = ax1.twinx()
    ax2.scatter(
        days, choices["carboncp_a"], s=2, color="tab:blue", alpha=0.4, label="CarbonCP-A partition"
    )
    ax2.set_ylabel("chosen partition p (0 = server, P = local)")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    ax1.set_title("CarbonCP-A's partition against the two carbon intensities")
    paths.append(_save(fig, out / "partition_vs_carbon.png"))

    fig, ax = plt.subplots(figsize=(6, 5))
    a = [c["alpha"] for c in cov_vs_alpha]
    ax.plot(a, [1 - x for x in a], "k--", label="target 1 − α")
    ax.plot(a, [c["split_cp"] for c in cov_vs_alpha], "o-", label="split CP (table)")
    ax.plot(a, [c["aci"] for c in cov_vs_alpha], "s-", label="ACI")
    ax.axvline(alpha, color="grey", lw=0.5)
    ax.set_xlabel("α")
    ax.set_ylabel("coverage of the oracle partition (test)")
    ax.set_title("Coverage against α")
    ax.legend()
    paths.append(_save(fig, out / "coverage_vs_alpha.png"))

    fig, ax = plt.subplots(figsize=(6, 5))
    k = costs.carbon_g.shape[1]
    for name in ("carboncp_a", "known_bandwidth"):
        if name in sets:
            ax.hist(sets[name]["size"], bins=np.arange(0.5, k + 1.5), alpha=0.6, label=name)
    ax.set_xlabel("conformal set size")
    ax.set_ylabel("test events")
    ax.set_title("Set sizes")
    ax.legend()
    paths.append(_save(fig, out / "set_size_hist.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
