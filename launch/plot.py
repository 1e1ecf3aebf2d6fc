"""Plot learning curves: `python launch/plot.py runs/CartPole-v1__ppo__1__* runs/CartPole-v1__ppo__2__*`
draws return against env steps from the runs' TensorBoard logs, one curve per env and experiment with the
mean and min-max spread over its seeds, into a PNG. Several tags (`--tag league/elo league/elo_perfect`)
draw one curve each per group, on the same axes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from envs.factory import solved_return
from training.cli import exit_process, run_cli
from training.errors import ConfigError
from training.plots import find_run_dirs, group_name, plot_seed_band, read_scalar


@dataclass
class PlotArgs:
    runs: Annotated[tyro.conf.Positional[tuple[str, ...]], tyro.conf.arg(metavar="RUN")]
    """run folders, or folders of run folders (such as runs/)"""
    tag: tuple[str, ...] = ("charts/mean_return_100",)
    """the scalars to draw: charts/mean_return_100 (last-100-episode mean), charts/episodic_return, eval/episodic_return, league/elo, ..."""
    out: str = "returns.png"
    """the PNG to write"""
    title: str = ""
    """the figure's title (default: the tag)"""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(PlotArgs, args=argv, description=__doc__.split("\n")[0])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list] = {}
    for run_dir in find_run_dirs(args.runs):
        for tag in args.tag:
            curve = read_scalar(run_dir, tag)
            if len(curve):
                name = group_name(run_dir) if len(args.tag) == 1 else f"{group_name(run_dir)} {tag}"
                groups.setdefault(name, []).append(curve)
    if not groups:
        raise ConfigError(f"none of the runs logged {' or '.join(repr(t) for t in args.tag)}; pick another --tag")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, curves) in enumerate(groups.items()):
        plot_seed_band(ax, curves, color=colors[i % len(colors)], label=name)
        print(f"{name}: {len(curves)} run(s), final value mean {sum(c[-1, 1] for c in curves) / len(curves):.2f}")
    envs = {name.split("__")[0] for name in groups}
    if len(envs) == 1 and (threshold := solved_return(envs.pop())) is not None and all("return" in t for t in args.tag):
        ax.axhline(threshold, color="gray", ls="--", lw=1, label="solved")
    ax.set_xlabel("env steps")
    ax.set_ylabel(", ".join(args.tag))
    ax.set_title(args.title or ", ".join(args.tag))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
