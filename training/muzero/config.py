"""MuZero's config and what it decides: the typed command line (tyro), its checks, the model it builds,
the search settings, self-play's temperature and sampling moves. Shared by the trainer and the self-play
workers (which build their own model copies), so that neither imports the other."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np

from agents.muzero.networks import MuZeroMLP, MuZeroNet, MuZeroResNet
from agents.muzero.search import SearchConfig
from envs.factory import board_grid, probe_spaces
from envs.minatar import MINATAR_GAMES
from envs.symmetries import Symmetries, env_symmetries
from training import presets
from training.errors import ConfigError
from training.provenance import usable_cores
from training.run_config import (
    CHANGEABLE_ON_RESUME,
    RunConfig,
    default_num_workers,
    run_config_problems,
    worker_problems,
)
from training.validation import range_problems

# What `--resume` may change in a MuZero run: the shared list, and whether the replay is checkpointed. A
# longer --total-timesteps also stretches the self-play temperature schedule, which follows the run's progress.
MUZERO_CHANGEABLE_ON_RESUME = (*CHANGEABLE_ON_RESUME, "checkpoint_replay")


@dataclass
class MuZeroConfig(RunConfig):
    """MuZero's settings: the shared ones (training.run_config.RunConfig) with MuZero's defaults, and these."""

    preset: str = "auto"
    """tuned settings to start from: 'auto' (the env's own preset if it has one), 'defaults' (the defaults shown without a preset), or an env id with a preset (CartPole-v1, MinAtar's games, TicTacToe, Connect Four)"""
    exp_name: str = "muzero"
    """the experiment name, part of the run folder runs/{env}__{exp}__{seed}__{time}"""
    total_timesteps: int = 10_000
    """env steps of self-play, at most"""
    solved_by: Literal["training", "evaluation"] = "evaluation"
    """what counts as solved: 'training' (the mean return of the last 100 self-play games reaches --stop-return) or 'evaluation' (a greedy evaluation of the search without noise does)"""
    num_envs: int = 8
    """self-play games played together (one batched search per move for each worker's games; CartPole's preset plays 4)"""
    eval_every: int = 2_000
    """env steps between greedy evaluations (the search without noise; the best is kept as checkpoints/best.pt); one more runs at the end; 0 = only the one at the end"""
    checkpoint_every: int = 2_000
    """env steps between checkpoints (a killed run loses at most this much); the final one is always written"""
    self_play_moves: int = 1
    """moves each game makes per self-play round; the learner updates (updates_per_step x env steps) and sends new weights between rounds"""
    num_simulations: int | None = None
    """search simulations per move; default: 16 with Gumbel's search, 25 with pUCT"""
    root_dirichlet_alpha: float = 0.25
    """pUCT self-play: the Dirichlet noise's concentration at the root (the paper: 0.3 chess, 0.15 shogi, 0.03 Go, 0.25 Atari); not used by Gumbel's search or evaluation"""
    root_exploration_fraction: float = 0.25
    """pUCT self-play: the noise's share of the root's prior (0 = none; the paper's 0.25); on a Connect Four model it changed the searched move in 14% of positions past the opening, 6.5% at 0.1"""
    parent_mean_q: bool = False
    """pUCT: an unvisited child's Q is its parent's mean Q (EfficientZero, LightZero) instead of 0 after normalisation, the tree's minimum"""
    gumbel: bool | None = None
    """Gumbel MuZero's search (works with very few simulations) instead of pUCT with Dirichlet noise; default: on for single-player envs (CartPole, 10 seeds: 8 of 10 solved within 5,000 env steps in two runs, against pUCT-25's 6 and 3; docs/benchmark/muzero_issue22.md), off for board games (their results were measured with pUCT)"""
    gumbel_q_range: Literal["children", "tree"] = "children"
    """Gumbel's search: what sigma(completed Q) scales Q by before its (c_visit + N) * c_scale weight: the extremes among the node's children (mctx, the paper) or over the whole search tree (MuZero's min-max; a small gap between two actions then gives a soft improved policy instead of a near-certain one)"""
    discount: float = 0.997
    """discount factor"""
    unroll_steps: int = 5
    """K: model steps unrolled per sample"""
    td_steps: int = 10
    """n of the n-step value targets"""
    batch_size: int = 256
    """positions per gradient step"""
    learning_rate: float = 3e-3
    """Adam's learning rate"""
    final_lr_fraction: float = 1.0
    """the learning rate falls linearly over --total-timesteps to this fraction of --learning-rate (1 = constant; the MuZero paper decays it)"""
    weight_decay: float = 1e-4
    """L2 regularisation of the weights"""
    max_grad_norm: float = 5.0
    """global gradient-norm clip"""
    value_loss_coef: float = 0.25
    """weight of the value loss beside the reward and policy losses (0.25: the paper's Reanalyse setting; CartPole's and Connect Four's presets weight it 1)"""
    updates_per_step: float = 1.0
    """gradient steps per env step of self-play (the replay ratio)"""
    warmup_steps: int = 400
    """env steps of self-play before the first gradient step"""
    replay_capacity: int = 100_000
    """positions kept in the replay (the oldest games leave first)"""
    checkpoint_replay: bool = True
    """keep the replay in the periodic checkpoints, so that --resume goes on from the same games (each kept checkpoint then holds a copy: MinAtar's 200k positions ~0.1 GB); --no-checkpoint-replay: a resumed run starts with an empty replay"""
    segment_length: int = 50
    """games in progress reach the replay every this many moves (each segment also keeps the next unroll_steps + td_steps moves for its targets); 0 = whole games only, when they end"""
    priority_alpha: float = 0.6
    """prioritised replay's alpha (0 = uniform sampling)"""
    priority_beta: float = 0.4
    """prioritised replay's importance-weight exponent (1 undoes the sampling bias fully, at the price of tiny weights on the most-sampled positions)"""
    hl_gauss_sigma: float = 0.0
    """value and reward targets as HL-Gauss histograms of this width in bins (Farebrother et al. 2024 advise 0.75) instead of two-hot; 0 = two-hot (the paper's)"""
    consistency_coef: float = 0.0
    """weight of EfficientZero's temporal consistency loss (the dynamics' hidden state vs the representation of the observation reached); 0 = MuZero's loss alone"""
    root_value_mix: float = 0.0
    """share of each value target taken from the search's root value at that position instead of the n-step return: (1 - x) z + x v (Oracle's AlphaZero on Connect Four trained on the average, 0.5, of the outcome and the root value; ours at 0.5, 2 seeds run side by side on one core each: 143 and 121 of 200 games against the lookahead at 400 simulations, the preset's 130 and 144 the same way); 0 = the n-step return alone (the paper's)"""
    reanalyse_fraction: float = 1.0
    """share of sampled unrolls whose bootstrap values are recomputed by the latest model (the value half of MuZero Reanalyse); 0 = the values stored at play time"""
    target_update_every: int = 0
    """gradient steps between refreshes of the target network whose values the reanalysed bootstrap targets use (EfficientZero and MuZero Reanalyse keep one; without, the targets move with every step); 0 = no target network: the latest weights"""
    reanalyse_policy_fraction: float = 0.0
    """share of sampled unrolls whose policy targets come from a new search by the latest model at the unroll's positions (the policy half of MuZero Reanalyse; costs a search of batch_size x (unroll_steps + 1) roots per update); 0 = the searches made at play time"""
    visit_temperature: float | None = None
    """self-play samples moves from visits^(1/T); T halves at 50% and 75% of the run; default: 1 for board games (the paper's: self-play must explore openings or it collapses), 0.25 otherwise (LightZero's: near-greedy play learns control tasks such as CartPole several times faster)"""
    augment_symmetries: bool = True
    """train each sampled unroll turned by a random one of the game's symmetries, for games that declare them (envs/symmetries.py: TicTacToe's 8 rotations and reflections, Connect Four's mirror, CartPole's, Acrobot's and LunarLander's mirror; CartPole, 10 seeds: mean greedy evaluation 402 against 321 without, higher on 9 seeds, 8/10 solved either way)"""
    symmetric_search: Literal["auto", "off", "evaluation", "all"] = "auto"
    """for games that declare symmetries (as --augment-symmetries): each search also runs from every symmetric copy of the position and their results, mapped back, are averaged (agents.muzero.policies.run_policy_over_symmetries; S times the roots); 'evaluation': in greedy evaluations, watch.py and evaluate.py; 'all': in self-play too; 'auto': 'evaluation' for single-player games (CartPole, seeds 1-10: 10/10 solved and held within 5,000 env steps, against 8/10 and 6/8 without, whose greedy play drifted to one end; seeds 11-20: 8/10, 5/8), 'off' for board games (Connect Four: the same 200-game results at twice the search)"""
    sampling_moves: int | None = None
    """moves at the start of each self-play game sampled at the visit temperature; later moves take the most visited action (root noise still explores). 0 = every move sampled. Default: 2 for board games (AlphaZero's num_sampling_moves: openings stay varied while the rest of the game, whose outcome the value targets learn, is played as well as the search can), 0 otherwise"""
    hidden_state: int = 64
    """size of the hidden state"""
    hidden_sizes: tuple[int, ...] = (64,)
    """hidden layer widths of each of the model's MLPs"""
    res_channels: int = 32
    """image observations and --board-net cnn: channels of the residual conv net"""
    res_blocks: int = 2
    """image observations and --board-net cnn: residual blocks in each of the representation and dynamics"""
    action_planes: Literal["value", "one-hot"] = "value"
    """image observations: how the dynamics see the action beside the hidden state: 'value' (one plane filled with (a + 1) / A, the paper's Atari encoding) or 'one-hot' (A planes, the action's filled with ones); boards always see a move as the cells it names"""
    support_size: int = 20
    """value and reward supports span h(x) in [-S w, S w], w the bin width (S=20, w=1: |x| up to ~440)"""
    support_bin_width: float = 1.0
    """w: the distance between the value's and reward's support bins in h(x); 1 = the paper's; a game whose values stay in [-1, 1] (h = +-0.415) has 3 bins between a loss and a win at 1, 17 at 0.05 (measured on Connect Four, 3 seeds: no more wins than at 1)"""


# Presets (training.presets): settings that replace the field defaults for one env; flags still win.
MUZERO_PRESETS: dict[str, dict] = {"defaults": {}}

# CartPole: the value loss weighted 1 like the reward and policy losses, not the paper's 0.25 (a weight
# chosen for Reanalyse's noisy Atari targets). CartPole's n-step targets have no noise (1 a move until the
# end), and at 0.25 the value stayed far below the games it was trained on, its error against its own
# targets 20-50 late in a run, so the search's two Q values differed by less than that error. Seeds 1-30,
# 5,000 env steps (docs/benchmark/muzero_issue22.md, round fourteen, 2026-12-07): 29/30 solved and 25/30
# held, where 0.25 gives 28/30 and 22/30 on the same seeds; by decade 10, 8 and 7 held (0.25: 10, 5 and 7);
# seeds 31-40: 10/10 solved, 7/10 held, as 0.25 there. A gain within chance at these counts, at no cost.
# Since 2026-12-07 it also plays 4 self-play games at a time, not 8 (round seventeen of the same document).
# A run's drops came after early solves: the model first learns to balance, and learns that the cart must
# not drift off the track only from games long enough to drift, which 8 games sharing 5,000 env steps play
# late (a 500-move game ends ~4,000 env steps after it starts). With 4 games each game moves twice as fast
# and the first drifts reach the replay ~2,000 steps sooner. Seeds 1-50, 5,000 env steps: 47 solved and 45
# held (by decade solved 9, 10, 10, 9, 9 and held 8, 9, 10, 9, 9: the 9 and 8 in every decade), where
# 8 games gave 48 and 40 (held 10, 8, 7, 7, 8). Side by side with 8 games (seeds 1 and 2, whole runs with
# their evaluations) it ran at 0.98x the env steps/s.
MUZERO_PRESETS["CartPole-v1"] = dict(value_loss_coef=1.0, num_envs=4)

# MinAtar (10x10 grids, v0: sticky actions, the full action set): the residual net with 16 channels
# (one update of batch 256 x 5 unrolled steps: 0.31 s in float32 on one thread here, 0.83 s with 32),
# its convolutions in bfloat16 where the CPU has it (0.18 s), and 0.125 updates per env step: self-play
# plus learning ran at 19-22 env steps/s on one core each in two hour-long Breakout runs side by side,
# and at 28.6 once the run skeleton kept freed memory (training/allocator.py; README, "MuZero on
# MinAtar"). The dynamics see the action as one-hot planes (v0's six actions, four of them no-ops in
# Breakout, were shades of one plane, with left and right on either side of a no-op) and EfficientZero's
# consistency loss (weight 2, its paper's) ties them to the observations reached. Breakout, 3 seeds: seed 1
# passed 17.5 (last 100 games) at 111k env steps and 84 minutes, seed 3 at 176k and 92 minutes (greedy
# 27.7 at 200k, in 104 minutes), seed 2 was at 11.0 when stopped at 119k: 2 of 3, where the old preset
# had 3.4 at 80k and one-hot planes alone 7.5 at 100k (docs/benchmark/muzero-minatar-action-planes.md).
# An update takes 0.32 s on one thread (0.27-0.28 with one-hot planes alone beside it) and 0.18-0.19 s
# with both cores: 37 env steps/s alone, 22-23 with two runs side by side.
_MINATAR_MUZERO = dict(
    res_channels=16, updates_per_step=0.125, learner_precision="auto", total_timesteps=200_000, eval_every=25_000,
    eval_episodes=10, checkpoint_every=10_000, action_planes="one-hot", consistency_coef=2.0,
)  # fmt: skip
MUZERO_PRESETS.update({f"MinAtar/{game}-{v}": dict(_MINATAR_MUZERO) for game in MINATAR_GAMES for v in ("v0", "v1")})

# TicTacToe: the defaults' model and search, for long enough to learn the game (the 10k-step default
# leaves several losing moves) and judged by a 100-game match against the perfect player plus the audit
# of every perfect line every 2,500 steps, stopping at the first evaluation with neither a loss nor a
# losing move. The self-play temperature halves at 50k and 75k steps. Measured: README, "TicTacToe".
MUZERO_PRESETS["rlgames/TicTacToe-v0"] = dict(total_timesteps=100_000, eval_every=2_500, eval_episodes=100)

# Connect Four: outcome targets (n = the game's 42 moves, no discount), the value loss weighted 1, and the
# residual net on the board's planes with bfloat16 convolutions at 0.25 updates per env step. In 60
# minutes on one core each (two seeds side by side, 2026-12-05) it won 86 and 95 of the same 200 games
# against the 4-ply lookahead player, where the defaults' MLPs won 21 (docs/benchmark/muzero-connect-four-1205.md).
# Those runs had --total-timesteps 1M, so their opening moves' temperature did not halve within the hour;
# the preset's 200k halves it at 100k and 150k steps.
# Alone on the machine (the updates on both cores), the preset's hour makes ~161k env steps, and its final
# models won 185 and 182 of those 200 games at 400 simulations a move (`evaluate.py RUN --num-simulations 400`;
# seeds 1 and 2, 2026-12-06): issue 22's 80%, where side by side on one core each they won 130 and 144.
MUZERO_PRESETS["rlgames/ConnectFour-v0"] = dict(
    td_steps=42, discount=1.0, value_loss_coef=1.0, board_net="cnn", res_channels=16, res_blocks=2,
    learner_precision="auto", updates_per_step=0.25, total_timesteps=200_000, eval_every=20_000, eval_episodes=50,
)  # fmt: skip


def apply_muzero_preset(cfg: MuZeroConfig, preset: str | None = None) -> MuZeroConfig:
    """cfg with a preset's settings (by default cfg.preset; 'auto' = cfg.env_id's preset, if any, else the
    field defaults), for configs built in code rather than parsed from a command line."""
    return presets.apply_preset(cfg, MUZERO_PRESETS, "defaults", preset)


def parse_muzero_config(argv: list[str] | None = None) -> MuZeroConfig:
    """Parse the command line (training.presets: the preset's values are the defaults; flags win)."""
    return presets.parse_with_presets(MuZeroConfig, MUZERO_PRESETS, "defaults", "Train MuZero on a Gymnasium env.",
                                      MUZERO_CHANGEABLE_ON_RESUME, argv)  # fmt: skip


def resolve_self_play(cfg: MuZeroConfig) -> tuple[str, int]:
    """(backend, num_workers) after 'auto' and 0: self-play in the learner's process unless asked otherwise
    (for small models and cheap envs a process round trip costs more than it saves)."""
    backend = "inprocess" if cfg.backend == "auto" else cfg.backend
    return backend, cfg.num_workers or default_num_workers(backend, cfg.num_envs)


def learner_threads(cfg: MuZeroConfig, residual: bool) -> int:
    """The updates' torch threads: --torch-threads, else every usable core for the residual net (self-play
    waits while the learner updates, so those cores are idle; Connect Four's update of 256 x 5 unrolled
    steps with 16 channels took 125 ms on one thread here and 79 ms on two) and one for the MLPs, whose
    results were all measured on one."""
    if cfg.torch_threads:
        return cfg.torch_threads
    return usable_cores() if residual else 1


def validate_muzero(cfg: MuZeroConfig) -> None:
    """Raise ConfigError naming the offending settings and what would work."""
    problems = run_config_problems(cfg)
    for name in ("num_simulations", "unroll_steps", "td_steps", "batch_size", "replay_capacity", "self_play_moves"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            problems.append(f"--{name.replace('_', '-')} must be > 0 (got {getattr(cfg, name)})")
    for name in ("reanalyse_fraction", "reanalyse_policy_fraction"):
        if not 0 <= getattr(cfg, name) <= 1:
            problems.append(f"--{name.replace('_', '-')} must lie in [0, 1] (got {getattr(cfg, name)})")
    if cfg.sampling_moves is not None and cfg.sampling_moves < 0:
        problems.append(f"--sampling-moves must be >= 0 (0 = every move; got {cfg.sampling_moves})")
    if cfg.visit_temperature is not None and cfg.visit_temperature <= 0:
        problems.append(f"--visit-temperature must be > 0 (got {cfg.visit_temperature})")
    if cfg.segment_length < 0:
        problems.append(f"--segment-length must be >= 0 (0 = whole games; got {cfg.segment_length})")
    backend, workers = resolve_self_play(cfg)
    if backend == "inprocess" and workers != 1:
        problems.append("--backend inprocess self-plays with one worker; use multiprocess or ray for several")
    elif cfg.num_envs > 0:
        problems += worker_problems(cfg, backend, workers)
    if cfg.replay_capacity < cfg.batch_size:
        problems.append(f"--replay-capacity {cfg.replay_capacity} is smaller than one --batch-size {cfg.batch_size}")
    problems += range_problems(
        cfg, positive=("learning_rate", "max_grad_norm", "value_loss_coef", "updates_per_step", "hidden_state", "support_size", "res_channels",
                  "support_bin_width", "root_dirichlet_alpha"),
        non_negative=("weight_decay", "warmup_steps", "priority_alpha", "consistency_coef", "res_blocks",
                      "target_update_every", "hl_gauss_sigma"),
        unit=("priority_beta", "final_lr_fraction", "root_exploration_fraction", "root_value_mix"), positive_unit=("discount",),
    )  # fmt: skip
    if problems:
        raise ConfigError("; ".join(problems))


@dataclass
class ModelSpaces:
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    masked: bool
    """whether observations carry an action mask"""
    pixels: bool = False
    """whether observations are 0-255 pixel intensities (Atari frames), which the net divides by 255;
    MinAtar's uint8 grids are 0 or 1 and are used as they are"""

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3


def model_spaces(env_id: str) -> ModelSpaces:
    observation_space, action_space = probe_spaces(env_id)
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"MuZero here plays Discrete action spaces; {env_id} has {action_space}")
    masked = isinstance(observation_space, gym.spaces.Dict)
    space = observation_space["obs"] if masked else observation_space
    pixels = space.dtype == np.uint8 and isinstance(space, gym.spaces.Box) and int(space.high.max()) > 1
    return ModelSpaces(tuple(space.shape), np.dtype(space.dtype), int(action_space.n), masked, pixels)


def build_model(cfg: MuZeroConfig) -> MuZeroNet:
    """MLPs for vector observations, the residual conv net for images [C, H, W] and, with --board-net cnn,
    for boards (which it reads as planes of their grid)."""
    spaces = model_spaces(cfg.env_id)
    grid = board_grid(cfg.env_id) if cfg.board_net == "cnn" else None
    if spaces.is_image or grid is not None:
        return MuZeroResNet(spaces.obs_shape, spaces.num_actions, cfg.res_channels, cfg.res_blocks, cfg.support_size,
                            cfg.support_size, pixels=spaces.pixels, board_grid=grid,
                            support_bin_width=cfg.support_bin_width, action_planes=cfg.action_planes)  # fmt: skip
    return MuZeroMLP(int(np.prod(spaces.obs_shape)), spaces.num_actions, cfg.hidden_state, cfg.hidden_sizes,
                     cfg.support_size, cfg.support_size, cfg.support_bin_width)  # fmt: skip


def check_replay_fits(cfg: MuZeroConfig, spaces: ModelSpaces, memory_bytes: int | None = None) -> None:
    """Refuse, before any work, a replay whose observations alone would take more than half this machine's
    memory (positions are stored in the observations' own dtype: uint8 frames take a quarter of float32)."""
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    per_position = int(np.prod(spaces.obs_shape)) * spaces.obs_dtype.itemsize + 8 * (spaces.num_actions + 4)
    if spaces.masked:
        per_position += spaces.num_actions  # the legal moves, one byte each
    if cfg.segment_length:
        # each segment also stores the unroll_steps + td_steps moves after its starts
        per_position = math.ceil(per_position * (1 + (cfg.unroll_steps + cfg.td_steps + 1) / cfg.segment_length))
    needed = per_position * cfg.replay_capacity
    if needed > memory_bytes / 2:
        fits = int(memory_bytes / 2 // per_position)
        raise ConfigError(
            f"--replay-capacity {cfg.replay_capacity} positions of {per_position:,} bytes need "
            f"{needed / 2**30:.1f} GiB, more than half of this machine's {memory_bytes / 2**30:.1f} GiB; "
            f"use --replay-capacity {fits} or less"
        )


def is_two_player(env_id: str) -> bool:
    return env_id.startswith("rlgames/")


def visit_temperature(cfg: MuZeroConfig) -> float:
    """Self-play's starting temperature: --visit-temperature, else 1 for board games, 0.25 otherwise.
    Measured here (5k-step CartPole, 4 seeds): T = 1 plays so close to random with 25 simulations on two
    actions that none solved; T = 0.25 solved all. On TicTacToe, T = 0.25 lost every game to the perfect
    player at 5k and 10k steps; T = 1 lost under a third at 10k and fewer after."""
    if cfg.visit_temperature is not None:
        return cfg.visit_temperature
    return 1.0 if is_two_player(cfg.env_id) else 0.25


def sampling_moves(cfg: MuZeroConfig) -> int:
    """Moves per self-play game sampled at the temperature: --sampling-moves, else 2 for board games and
    0 (all) otherwise. Measured here on TicTacToe: sampling every move at T = 1 teaches values of noisy
    play, in which a theoretically lost position is often still drawn (the model rated lost positions
    -0.04 on average after 20k steps), so the search walked into them against the perfect player."""
    if cfg.sampling_moves is not None:
        return cfg.sampling_moves
    return 2 if is_two_player(cfg.env_id) else 0


def uses_gumbel(cfg: MuZeroConfig) -> bool:
    """--gumbel, else Gumbel's search for single-player envs and pUCT for board games."""
    return cfg.gumbel if cfg.gumbel is not None else not is_two_player(cfg.env_id)


def num_simulations(cfg: MuZeroConfig) -> int:
    """--num-simulations, else 16 with Gumbel's search and 25 with pUCT."""
    if cfg.num_simulations is not None:
        return cfg.num_simulations
    return 16 if uses_gumbel(cfg) else 25


def symmetric_search(cfg: MuZeroConfig) -> str:
    """--symmetric-search after 'auto': 'evaluation' for single-player games, 'off' for board games."""
    if cfg.symmetric_search != "auto":
        return cfg.symmetric_search
    return "off" if is_two_player(cfg.env_id) else "evaluation"


def search_symmetries(cfg: MuZeroConfig, self_play: bool) -> Symmetries | None:
    """The symmetries the searches of self-play (self_play) or of evaluation and watching average over,
    per --symmetric-search; None where the game declares none."""
    mode = symmetric_search(cfg)
    wanted = mode == "all" or (mode == "evaluation" and not self_play)
    return env_symmetries(cfg.env_id) if wanted else None


def search_config(cfg: MuZeroConfig) -> SearchConfig:
    return SearchConfig(num_simulations=num_simulations(cfg), discount=cfg.discount, two_player=is_two_player(cfg.env_id),
                        gumbel=uses_gumbel(cfg), parent_mean_q=cfg.parent_mean_q, dirichlet_alpha=cfg.root_dirichlet_alpha,
                        root_exploration_fraction=cfg.root_exploration_fraction, gumbel_q_range=cfg.gumbel_q_range)  # fmt: skip
