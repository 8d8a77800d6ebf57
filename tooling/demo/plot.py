"""demo.png: carbon of both grids, the link and mode A's threshold, the policies' decisions
(each change of the first policy marked with its cause), and their cumulative carbon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from carboncp.tooling.demo.config import HOUR_S, DemoConfig

_CARBON_KEYS = ("device_gco2_per_kwh", "server_gco2_per_kwh")
_CAUSE_STYLE = {
    "carbon": ("tab:green", "*", "carbon"),
    "link": ("tab:blue", "v", "link"),
    "both": ("tab:purple", "D", "carbon and link"),
    "other": ("tab:gray", "x", "other"),
}
_POLICY_STYLE = {"local": ("0.5", "--", 1.2), "server": ("tab:orange", ":", 1.5)}
_DEFAULT_STYLE = ("black", "-", 1.8)


def draw_plot(
    steps: list[dict[str, Any]], summary: dict[str, Any], cfg: DemoConfig, out: Path, P: int
) -> None:
    """Write out/demo.png and say where; without matplotlib, say how to get it."""
    try:
        png = plot(steps, summary, cfg, out / "demo.png", P)
        print(f"plot: {png}")
    except ImportError:
        print("plot: skipped (matplotlib is not installed: pip install 'carboncp[tooling]')")


def plot(
    steps: list[dict[str, Any]], summary: dict[str, Any], cfg: DemoConfig, path: Path, P: int
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.array([(s["t_s"] - steps[0]["t_s"]) / HOUR_S for s in steps])
    fig, ax = plt.subplots(
        4, 1, figsize=(11, 11), sharex=True, gridspec_kw={"height_ratios": [1.1, 1.1, 1.2, 0.8]}
    )
    causes = [s.get("cause") for s in steps]
    for h, c in zip(hours, causes, strict=True):  # carbon-driven switches across the panels
        if c in ("carbon", "both"):
            for a in ax[:3]:
                a.axvline(h, color=_CAUSE_STYLE[c][0], alpha=0.35, lw=2, zorder=0)
    _carbon_panel(ax[0], hours, steps, cfg)
    _link_panel(ax[1], hours, steps, summary, cfg)
    _decision_panel(ax[2], hours, steps, causes, cfg, P)
    _cumulative_carbon_panel(ax[3], hours, steps, summary, cfg)
    fig.suptitle(
        f"CarbonCP demo: emulated {summary['device']} device ({cfg.device_zone} grid), edge "
        f"server ({cfg.server_zone} grid), offload link paced to a real trace",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _carbon_panel(ax: Any, hours: np.ndarray, steps: list[dict[str, Any]], cfg: DemoConfig) -> None:
    first = cfg.policies[0]
    ax.plot(hours, [s[first].seen["device_gco2_per_kwh"] for s in steps],
            drawstyle="steps-post", label=f"device grid {cfg.device_zone}")  # fmt: skip
    ax.plot(hours, [s[first].seen["server_gco2_per_kwh"] for s in steps],
            drawstyle="steps-post", label=f"server grid {cfg.server_zone}")  # fmt: skip
    ax.set_ylabel("gCO2eq/kWh")
    ax.set_ylim(0, 1.3 * max(max(s[first].seen[k] for s in steps) for k in _CARBON_KEYS))
    ax.set_title("grid carbon intensity, replayed over MQTT (bands: switches driven by carbon, green, or by carbon and link, purple)",
                 fontsize=10, loc="left")  # fmt: skip
    ax.legend(loc="upper right", fontsize=9)


def _link_panel(
    ax: Any, hours: np.ndarray, steps: list[dict[str, Any]], summary: dict[str, Any],
    cfg: DemoConfig,
) -> None:  # fmt: skip
    first = cfg.policies[0]
    ax.plot(hours, [s["true_mbps"] for s in steps], color="0.6", lw=1,
            label=f"link ({cfg.bandwidth} x {summary['scale']:g})")  # fmt: skip
    ax.plot(hours, [s[first].seen["bandwidth_mbps"] for s in steps], color="tab:blue",
            label=f"{first}: link estimate")  # fmt: skip
    ax.plot(hours, [s["threshold_mbps"] for s in steps], color="tab:red", lw=2,
            drawstyle="steps-post", label="mode A's offload threshold B*/f (moves with carbon)")  # fmt: skip
    ax.set_ylabel("Mbit/s")
    ax.set_ylim(0, 1.45 * max(max(s["true_mbps"] for s in steps), 1e-3))
    ax.set_title("mode A offloads when its link estimate is above B*/f: carbon moves B*, "
                 "the link moves the estimate", fontsize=10, loc="left")  # fmt: skip
    ax.legend(loc="upper right", fontsize=9)


def _decision_panel(
    ax: Any, hours: np.ndarray, steps: list[dict[str, Any]], causes: list[str | None],
    cfg: DemoConfig, P: int,
) -> None:  # fmt: skip
    first = cfg.policies[0]
    for name in cfg.policies:
        color, ls, lw = _POLICY_STYLE.get(name, _DEFAULT_STYLE)
        ax.plot(hours, [s[name].partition for s in steps], drawstyle="steps-post",
                label=name, color=color, ls=ls, lw=lw)  # fmt: skip
    parts = np.array([s[first].partition for s in steps])
    for c, (color, marker, label) in _CAUSE_STYLE.items():
        idx = [k for k, cc in enumerate(causes) if cc == c]
        if idx:
            ax.scatter(hours[idx], parts[idx], color=color, marker=marker, s=90, zorder=3,
                       label=f"{first} changed by {label} ({len(idx)})")  # fmt: skip
    ax.set_ylabel("partition p")
    ax.set_yticks(range(P + 1))
    ax.set_yticklabels([f"{p}" + (" (offload image)" if p == 0 else " (local)" if p == P else "")
                        for p in range(P + 1)])  # fmt: skip
    ax.set_ylim(-0.5, P + 0.5)
    ax.set_title(f"decisions: {first} (CarbonCP) and the baselines", fontsize=10, loc="left")
    ax.legend(loc="center right", fontsize=8, ncol=2)


def _cumulative_carbon_panel(
    ax: Any, hours: np.ndarray, steps: list[dict[str, Any]], summary: dict[str, Any],
    cfg: DemoConfig,
) -> None:  # fmt: skip
    for name in cfg.policies:
        color, ls, lw = _POLICY_STYLE.get(name, _DEFAULT_STYLE)
        ax.plot(hours, np.cumsum([s[name].model["carbon_g"] * 1000 for s in steps]),
                label=name, color=color, ls=ls, lw=lw)  # fmt: skip
    ax.set_ylabel("cumulative mgCO2eq")
    h = summary.get("headline")
    if h:
        said = [
            f"{abs(v):.1f}% {'less' if v >= 0 else 'more'} than {b}-only"
            for b in ("local", "server")
            if (v := h.get(f"saving_vs_{b}_with_probes_pct")) is not None and np.isfinite(v)
        ]
        ax.set_title(f"cumulative carbon, link probes included: {h['policy']} emitted "
                     f"{' and '.join(said)}", fontsize=10, loc="left")  # fmt: skip
    ax.set_xlabel(f"hours into the replayed window (from {summary['window_start_utc']})")
    ax.legend(loc="upper left", fontsize=9)
