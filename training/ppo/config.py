"""PPO's typed config, its presets, and the checks that reject settings which cannot work together.

The command line is generated from `PPOConfig` by tyro: every field is a flag (`--env-id`,
`--num-envs`, ...; CleanRL's names), and its docstring is the help text. The field defaults are
CleanRL's ppo.py defaults; `--preset` (default: the env's own, when it has one) replaces them with
settings tuned for one env, and any flag given on the command line still wins over the preset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from agents.networks import is_image_space
from envs.atari import AtariOptions, atari_problems
from envs.factory import board_grid, is_atari, is_two_player, probe_spaces
from envs.minatar import MINATAR_GAMES
from envs.sc2 import SC2Options, is_sc2, is_sc2_sim
from envs.symmetries import env_symmetries, games_with_symmetries
from training import presets
from training.errors import ConfigError
from training.league import LeagueOptions, league_problems
from training.provenance import usable_cores
from training.run_config import (
    CHANGEABLE_ON_RESUME,
    RunConfig,
    default_num_workers,
    run_config_problems,
    worker_problems,
)
from training.run_config import config_from_dict as _config_from_dict
from training.run_config import config_to_dict as config_to_dict
from training.validation import range_problems, resolve_device


@dataclass
class PPOConfig(RunConfig):
    """PPO's settings: the shared ones (training.run_config.RunConfig) and these."""

    preset: str = "auto"
    """tuned settings to start from: 'auto' (the env's own preset if it has one), 'cleanrl' (CleanRL's ppo.py defaults), or an env id with a preset"""
    exp_name: str = "ppo"
    """the experiment name, part of the run folder runs/{env}__{exp}__{seed}__{time}"""
    num_learners: int = 0
    """data-parallel learner processes (DDP; each with its share of the envs and its own workers): 0 = one per visible GPU when the learner runs on CUDA, else 1"""

    # Rollout workers
    num_steps: int = 128
    """steps per env per rollout (the rollout is num_envs * num_steps env steps)"""
    async_rollouts: bool = False
    """collect the next rollout while the learner updates (workers never wait; the data lags the learner by at most one policy version, corrected with V-trace targets and a PPO ratio clipped around the acting policy, as in APPO); needs --backend multiprocess or ray"""

    # PPO
    learning_rate: float = 2.5e-4
    """Adam's learning rate"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over total_timesteps"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE's lambda"""
    num_minibatches: int = 4
    """minibatches per epoch; must divide num_envs * num_steps"""
    update_epochs: int = 4
    """epochs over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss (PPO2 style)"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    target_kl: float | None = None
    """stop an update's epochs early once the approximate KL exceeds this (None: never)"""
    sil_updates: int = 0
    """self-imitation learning (Oh et al. 2018; training/ppo/self_imitation.py): minibatch steps after each PPO update on a replay of finished episodes' transitions, imitating the actions whose discounted return beat the critic's value; for games whose rare good episodes PPO forgets (MinAtar Seaquest); 0 = off"""
    sil_batch_size: int = 512
    """transitions in each self-imitation minibatch (the paper's 512)"""
    sil_capacity: int = 100_000
    """transitions the self-imitation replay keeps (the oldest leave first); they travel in the periodic checkpoints"""
    sil_value_coef: float = 0.01
    """weight of the self-imitation value loss (the paper's beta, 0.01)"""
    rnd_coef: float = 0.0
    """random network distillation (Burda et al. 2018; agents/rnd.py): an exploration bonus, the prediction error of a trained network against a fixed random one on the states reached, with a critic of its own and a non-episodic return; PPO's advantage becomes A_extrinsic + rnd_coef * A_intrinsic (the paper's 2:1 = 0.5); for games whose reward needs a discovery (MinAtar Seaquest's surfacing); 0 = off"""
    anneal_rnd: bool = False
    """decay rnd_coef linearly to 0 over total_timesteps, as anneal_lr does the learning rate: the bonus drives the search for what the reward needs early, and the policy plays for the score alone by the end (a constant bonus strong enough to find Seaquest's surfacing kept the policy exploring instead of scoring)"""
    rnd_anneal_fraction: float = 1.0
    """with --anneal-rnd: the share of total_timesteps over which the weight falls to 0, staying 0 for the rest (1 = the whole run; 0.5: the second half plays for the score alone)"""
    rnd_gamma: float = 0.99
    """discount of the intrinsic return (the paper's 0.99)"""
    rnd_update_proportion: float = 0.25
    """share of each minibatch the RND predictor learns from (the paper's 0.25 at 32 envs: less keeps the bonus from fading as fast with many envs)"""
    normalize_obs: bool = False
    """normalise observations with running statistics (kept in the model and the checkpoint)"""
    normalize_reward: bool = False
    """scale rewards by the running std of the discounted return (statistics kept in the checkpoint; the MinAtar Breakout and Seaquest presets turn it on)"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and critic MLPs (vector observations)"""
    activation: Literal["tanh", "relu"] = "tanh"
    """activation of the MLPs"""
    conv_body_sizes: tuple[int, ...] = ()
    """frames, MinAtar grids and board CNNs: separate actor and critic MLP bodies of these widths after the shared CNN (with --activation); empty: linear heads on the CNN's features (CleanRL's Atari agent)"""
    grid_filters: int = 16
    """MinAtar grids: 3x3 filters of the GridCNN's one convolution (the MinAtar paper's 16; pgx's MinAtar PPO uses 32); other observations ignore it"""
    policy_memory: Literal["none", "lstm"] = "none"
    """'lstm': an LSTM core in the policy (vectors: reading the observation, before the MLPs; frames and grids: after the CNN; StarCraft II: after FullyConv's fully connected layer), reset at every episode start, trained on whole env sequences (truncated BPTT over the rollout; needs --num-envs divisible by --num-minibatches); for partially observed games"""
    lstm_size: int = 128
    """units of the LSTM core (--policy-memory lstm)"""
    mlp_kernel: Literal["auto", "torch"] = "auto"
    """'auto': MLP policies over vector observations and Discrete actions (classic control, Box2D) act and learn on the CPU through one compiled numba kernel (agents/ppo_kernel.py: the same PPO math; minibatch steps ~2.5-8x and acting ~4x faster than torch here; compiled once per machine, ~15-20 s, then cached); 'torch': always torch ops and autograd (others always use torch)"""

    # Two-player games: league self-play
    league: LeagueOptions = field(default_factory=LeagueOptions)
    augment_symmetries: bool = False
    """each update sees every sample through one of the game's symmetries drawn at random (envs/symmetries.py: Connect Four's left-right mirror, TicTacToe's 8 rotations and reflections, CartPole's, Acrobot's and LunarLander's mirror), keeping its advantage, return, value and the rollout's log-probability (rsl_rl's symmetry augmentation)"""

    # Atari (ALE/...)
    atari: AtariOptions = field(default_factory=AtariOptions)

    # StarCraft II (sc2/<map>, sc2-mock/<map>)
    sc2: SC2Options = field(default_factory=SC2Options)
    save_replay_every: int = 0
    """StarCraft II: save a .SC2Replay of every Nth episode of each game under RUN_DIR/replays/ (0 = none)"""

    # Faults


    # Logging and checkpoints

    @property
    def memory_lstm_size(self) -> int:
        """The LSTM core's units, 0 without memory."""
        return self.lstm_size if self.policy_memory == "lstm" else 0

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        return max(1, self.total_timesteps // self.batch_size)


# Settings tuned on the 2-core CPU machine with launch/benchmark.py (see README.md's results).
# Each is a set of overrides of the CleanRL defaults above.
PRESETS: dict[str, dict] = {
    "cleanrl": {},
    # rl-zoo's CartPole settings, retuned here (launch/benchmark.py): no value clipping (targets reach ~100
    # and a critic clipped to 0.2 per step learns slowly), and 10 epochs of 8 minibatches of 64. With the
    # compiled kernel (--mlp-kernel auto) a step on 64 samples costs ~0.2 ms, and this solved in a median
    # of 54k env steps (seeds 1-10, 10/10; 56k on seeds 11-20, 10/10) where 2 minibatches of 256, chosen
    # when every torch step cost ~1.5 ms whatever its size, took 63k. Through torch it is ~3x slower.
    "CartPole-v1": dict(
        num_envs=8, num_steps=64, learning_rate=3e-3, gamma=0.99, gae_lambda=0.9, num_minibatches=8,
        update_epochs=10, ent_coef=0.0, clip_vloss=False, total_timesteps=100_000,
    ),
    # CartPole-v1's preset with memory, for CartPole without its velocities: an LSTM of 64 reading the
    # normalised observation, then a 64-unit ReLU MLP (SB3-contrib's RecurrentPPO layout), 150k steps.
    "rlgames/CartPoleNoVel-v1": dict(
        policy_memory="lstm", lstm_size=64, hidden_sizes=(64,), activation="relu", num_envs=8, num_steps=64,
        learning_rate=3e-3, gamma=0.99, gae_lambda=0.9, num_minibatches=2, update_epochs=10, ent_coef=0.0,
        clip_vloss=False, normalize_obs=True, normalize_reward=True, total_timesteps=150_000,
    ),
    # rl-zoo's Acrobot settings without value clipping; its simulator (~30 us a step) gains from 2 workers.
    "Acrobot-v1": dict(
        num_envs=16, num_steps=256, gamma=0.99, gae_lambda=0.94, num_minibatches=4, update_epochs=4,
        ent_coef=0.0, normalize_obs=True, clip_vloss=False, backend="multiprocess", total_timesteps=1_000_000,
        eval_every=100_000,
    ),
    # rl-zoo's LunarLander settings without value clipping. Minibatches of 64 (64 Adam steps per 1000 env
    # steps) are what it takes: with 8-16 steps per 1000 the lander learns to hover and stalls near 150.
    "LunarLander-v3": dict(
        num_envs=16, num_steps=1024, learning_rate=3e-4, anneal_lr=False, gamma=0.999, gae_lambda=0.98,
        num_minibatches=256, update_epochs=4, ent_coef=0.01, clip_vloss=False, total_timesteps=2_000_000,
        eval_every=100_000,
    ),
    "Pendulum-v1": dict(
        num_envs=4, num_steps=1024, learning_rate=1e-3, gamma=0.9, gae_lambda=0.95, num_minibatches=64,
        update_epochs=10, ent_coef=0.0, clip_vloss=False, normalize_obs=True, normalize_reward=True,
        total_timesteps=200_000,
    ),
    "MountainCarContinuous-v0": dict(
        num_envs=1, num_steps=8, learning_rate=7.77e-5, gamma=0.9999, gae_lambda=0.9, num_minibatches=1,
        update_epochs=10, ent_coef=0.00429, clip_coef=0.1, max_grad_norm=5.0, vf_coef=0.19,
        normalize_obs=True, normalize_reward=True, total_timesteps=50_000,
    ),
    # League self-play (training.league): the learner plays its current self half the time and PFSP-drawn
    # snapshots (one every 10 updates) the other half; solved when a greedy 100-game match against the
    # perfect player loses none. Random openings (0-4 random plies) are what made it: without them the
    # league settles on a few lines and the learner, never meeting the rest, kept losing 40-95 of 100 games
    # to the perfect player after 300k-700k steps (with 5-20% random opponent moves alone: 30-65).
    # Small batches and many Adam steps, as CartPole's preset: 4x fewer steps per update learned 5x faster.
    "rlgames/TicTacToe-v0": dict(
        num_envs=8, num_steps=64, learning_rate=1e-3, gamma=0.99, gae_lambda=0.95, num_minibatches=4,
        update_epochs=10, ent_coef=0.01, hidden_sizes=(128, 128), total_timesteps=3_000_000,
        league=LeagueOptions(random_opening_plies=4, opponent_epsilon=0.05),
        solved_by="evaluation", eval_every=50_000, eval_episodes=100,
    ),
    # Connect Four: the board through a CNN (an MLP stayed at 0-11 wins in 100 against the lookahead player
    # after 800k-1.2M steps, with or without that player in the league), 16 envs x 64 steps, 4 epochs of 4
    # minibatches, Adam 5e-4. The 4-ply lookahead player is in the league beside the snapshots, so the
    # evaluation (a match against it) measures an opponent the learner trains against (README). Rollouts
    # run in one worker process while the learner updates (--async-rollouts): 1.31x the env steps/s of
    # the in-process loop on 2 cores, and what the 60-minute runs in the README used. The update's CNN runs
    # in bfloat16 where the CPU has it natively (learner_precision auto): 1.5x the env steps/s of float32
    # on this machine's AMD EPYC over a run's first 90 s (268k vs 176k steps).
    "rlgames/ConnectFour-v0": dict(
        board_net="cnn", num_envs=16, num_steps=64, learning_rate=5e-4, num_minibatches=4, update_epochs=4,
        ent_coef=0.01, total_timesteps=10_000_000, backend="multiprocess", num_workers=1, async_rollouts=True,
        learner_precision="auto",
        league=LeagueOptions(random_opening_plies=4, opponent_epsilon=0.05, references=("lookahead",)),
        solved_by="evaluation", stop_when_solved=False, eval_every=100_000, eval_episodes=100,
    ),
}  # fmt: skip

# Atari (ALE/*-v5: sticky actions, the minimal action set): CleanRL's ppo_atari settings (8 envs x 128
# steps, 4 minibatches, 4 epochs, clip 0.1, Adam 2.5e-4 annealed over 10M steps), the Nature CNN.
_ATARI_PPO = dict(
    num_envs=8, num_steps=128, learning_rate=2.5e-4, num_minibatches=4, update_epochs=4, clip_coef=0.1,
    ent_coef=0.01, total_timesteps=10_000_000, checkpoint_every=500_000, eval_every=250_000, video_every=200,
)  # fmt: skip
ATARI_GAMES = ("Breakout", "Pong", "BeamRider", "Enduro", "Qbert", "Seaquest", "SpaceInvaders", "MsPacman", "Asteroids")
PRESETS.update({f"ALE/{game}-v5": dict(_ATARI_PPO) for game in ATARI_GAMES})

# MinAtar (v0: the paper's sticky actions and full action set): CleanRL-style settings for 64 envs (GPU
# examples run thousands) with short rollouts: 64 x 32 steps, 4 minibatches of 512, 4 epochs, Adam 5e-4
# annealed, entropy 0.01, the paper's 5M-frame budget. Actor and critic get 64-64 tanh bodies of their own
# after the shared GridCNN (pgx's MinAtar layout): on Breakout-v0 linear heads on the CNN sat at 5.1-5.4
# from 400k frames on, the bodies reached 20.8 at 5M (seed 1; README, "MinAtar"). The 32-step rollouts
# (128 until 2026-12-04) make four times the updates per frame at about the same cost per frame
# (docs/benchmark/minatar5m-rollout32.md; last-100 means at 5M, seeds 1-5): Asterix 23.1, 19.1, 24.1,
# 24.4, 21.0 against 12.8-17.8 with 128, Breakout 16.0, 16.0, 24.1, 23.4, 19.3 against 20.8, 14.2, 7.9,
# 11.3, 15.7, SpaceInvaders 214.5, 279.4, 284.4, 271.0, 194.2 against 157.7-226.1. Freeway keeps 128-step rollouts:
# its reward comes only once a crossing is found, and until then the normalised advantages are noise that
# four times the updates turned into a policy (entropy 1.79 -> 0.8 nats) that never crossed in 3.2M
# frames; with 128 the first crossings come at ~0.8M and all five seeds reach 59-63. Seaquest keeps them
# too: 32-step rollouts reached 6.3, 4.1, 2.8, 4.3 and 3.7 on seeds 1-5 where 128 reached 7.3, 5.3, 8.9,
# 5.3 and 5.8 (both far below the paper's ~20). Entropy 0.001 was tried too: Seaquest seeds 1-3 reached
# 36.5, 4.3 and 2.8, Asterix and Breakout lost a third; a discount of 0.995, Seaquest seed 1 4.9. The
# Seaquest agents at 3-6 die of oxygen at ~200 frames and almost never surface with a diver (the one at
# 36.5 surfaces ~6 times a game): the plateau is a discovery problem. So Seaquest adds random network
# distillation's exploration bonus (--rnd-coef 0.5, since 2026-12-05; docs/benchmark/minatar5m-seaquest-rnd.md):
# seeds 1-5 reached 44.1, 12.9, 4.7, 3.8 and 11.2 (median 11.2, 1/5 above ~20; three of the five agents
# surface with a diver 1.4-5.2 times a game) at 0.58x the preset's frames a second. Since 2026-12-06 the bonus
# starts at 2.0 and decays linearly to 0 (--anneal-rnd; docs/benchmark/minatar5m-seaquest-1206.md): seeds 1-5
# reached 11.9, 8.9, 38.0, 22.6 and 5.2 (median 11.9, 2/5 above ~20) and all five agents surface with a diver,
# where the constant 0.5 left seeds 3 and 4 never surfacing (a constant 1.0 surfaced but scored 5-12). Since
# 2026-12-07 Seaquest also scales its rewards by the running std of the discounted return (--normalize-reward;
# docs/benchmark/minatar5m-seaquest-1207.md): seeds 1-10 reached a median of 19.75 at 5M (4/10 above ~20; the
# lowest 10.6) against 12.5 (2/10; the lowest 4.3) without, higher on 8 seeds of 10. Breakout keeps its learning rate
# constant: seeds 1 and 2 were still rising at 5M as the annealed rate reached 0; constant, seeds 1-5
# reached 16.05, 20.91, 21.43, 22.07 and 22.05 (4/5 above ~17.5, median 21.4; annealed 3/5, median 19.3).
# Since 2026-12-07 Breakout scales its rewards too: seeds 1-5 reached 22.69, 21.11, 19.42, 18.55 and 21.93
# (5/5 above ~17.5, median 21.1, the lowest 18.55 instead of 16.05; same document as Seaquest's scaling).
# Since 2026-12-07 Seaquest learns at 1e-3 (annealed; the bonus's predictor and critic too): seeds 1-10
# reached 49.06, 39.45, 32.82, 53.60, 24.31, 29.30, 16.42, 34.99, 28.79 and 37.48 (median 33.9, 9/10 above
# ~20; seeds 1-5 5/5; AMD EPYC) where 5e-4 reached a median of 19.75 (4/10), at 3,598-4,071 SPS two at a
# time against 5e-4's 3,575-4,051 on another day (not a side-by-side pair; same document). Half the rate
# had stalled seed 1 (0.9 at 3M): the learning was limited by its step size.
_MINATAR_PPO = dict(
    num_envs=64, num_steps=32, learning_rate=5e-4, num_minibatches=4, update_epochs=4, gamma=0.99,
    gae_lambda=0.95, clip_coef=0.2, ent_coef=0.01, conv_body_sizes=(64, 64), total_timesteps=5_000_000,
    eval_every=250_000, checkpoint_every=500_000,
)  # fmt: skip
_MINATAR_GAME_PPO = {game: dict(num_steps=128, num_minibatches=8) for game in ("Freeway", "Seaquest")}
_MINATAR_GAME_PPO["Breakout"] = dict(anneal_lr=False, normalize_reward=True)
_MINATAR_GAME_PPO["Seaquest"].update(rnd_coef=2.0, anneal_rnd=True, normalize_reward=True, learning_rate=1e-3)
PRESETS.update({f"MinAtar/{game}-{v}": dict(_MINATAR_PPO, **_MINATAR_GAME_PPO.get(game, {}))
                for game in MINATAR_GAMES for v in ("v0", "v1")})  # fmt: skip

# StarCraft II mini-games: starting points from Reaver's published PPO settings for its FullyConv agent
# (64 games x 16 steps per update, 3 epochs of 2 minibatches, Adam 5e-4, entropy 1e-3), with GAE
# lambda 0.95. NOT tuned here: this machine has no game (see README's StarCraft II section). Budgets
# follow how long Reaver and the SC2LE paper trained: MoveToBeacon learns in ~1M steps, the others take
# tens of millions.
_SC2_PPO = dict(
    num_envs=64, num_steps=16, learning_rate=5e-4, anneal_lr=False, gamma=0.99, gae_lambda=0.95,
    num_minibatches=2, update_epochs=3, ent_coef=1e-3, vf_coef=0.5, clip_vloss=False, max_grad_norm=10.0,
    eval_every=200_000, eval_episodes=20, checkpoint_every=200_000,
)  # fmt: skip
_SC2_BUDGETS = {
    "MoveToBeacon": 2_000_000, "CollectMineralShards": 20_000_000, "FindAndDefeatZerglings": 20_000_000,
    "DefeatRoaches": 20_000_000, "DefeatZerglingsAndBanelings": 20_000_000, "CollectMineralsAndGas": 20_000_000,
    "BuildMarines": 50_000_000,
}  # fmt: skip
PRESETS.update({f"sc2/{name}": dict(_SC2_PPO, total_timesteps=budget) for name, budget in _SC2_BUDGETS.items()})

# The simulated mini-games (sc2-sim/<map>, envs.sc2_sim): tuned here on this 2-core CPU (README, "StarCraft II,
# simulated"). Each map's layers and functions are the ones its task needs (the paper's agent saw them all).
_SC2_SIM_PPO = dict(
    num_envs=32, num_steps=32, learning_rate=1e-3, anneal_lr=True, gamma=0.99, gae_lambda=0.95, num_minibatches=8,
    update_epochs=4, ent_coef=1e-3, vf_coef=0.5, clip_vloss=False, max_grad_norm=1.0, eval_every=50_000,
    eval_episodes=20, checkpoint_every=50_000,
)  # fmt: skip
_SC2_SIM_MAPS = {
    "MoveToBeacon": dict(total_timesteps=200_000, sc2=SC2Options(
        screen_size=16, minimap_size=8, screen_features=("player_relative", "selected"),
        minimap_features=("player_relative",), offer_no_op=False, functions=("select_army", "Move_screen"))),
    "CollectMineralShards": dict(total_timesteps=300_000, sc2=SC2Options(
        screen_size=16, minimap_size=8, screen_features=("player_relative", "selected"),
        minimap_features=("player_relative",), offer_no_op=False, functions=("select_army", "select_point", "Move_screen"))),
    "DefeatRoaches": dict(total_timesteps=300_000, sc2=SC2Options(
        screen_size=16, minimap_size=8, screen_features=("player_relative", "selected", "unit_hit_points_ratio"),
        minimap_features=("player_relative",), offer_no_op=False,
        functions=("select_army", "select_point", "Move_screen", "Attack_screen"))),
}  # fmt: skip
PRESETS.update({f"sc2-sim/{name}": dict(_SC2_SIM_PPO, **settings) for name, settings in _SC2_SIM_MAPS.items()})


def apply_preset(cfg: PPOConfig, preset: str | None = None) -> PPOConfig:
    """cfg with a preset's settings (by default cfg.preset; 'auto' = cfg.env_id's preset, if any, else CleanRL's)."""
    return presets.apply_preset(cfg, PRESETS, "cleanrl", preset)


# What `--resume` may change in a PPO run: the shared list (with the learner's precision and threads) and
# whether the compiled kernel or torch does the arithmetic (the parameters and Adam's state are the same
# float32 tensors either way).
PPO_CHANGEABLE_ON_RESUME = (*CHANGEABLE_ON_RESUME, "mlp_kernel")


def parse_ppo_config(argv: list[str] | None = None) -> PPOConfig:
    """Parse the command line (training.presets: the preset's values are the defaults; flags win)."""
    return presets.parse_with_presets(PPOConfig, PRESETS, "cleanrl", "Train PPO on a Gymnasium env.",
                                      PPO_CHANGEABLE_ON_RESUME, argv)  # fmt: skip


def learner_device(cfg: PPOConfig) -> torch.device:
    """--device resolved; 'auto' takes the GPU for the convolutional agents alone (validation.resolve_device)."""
    return resolve_device(cfg.device, lambda: convolutional(cfg))


def convolutional(cfg: PPOConfig) -> bool:
    """Whether the agent reads its observations with a CNN (frames, MinAtar grids, boards, StarCraft II)."""
    if is_sc2(cfg.env_id) or (cfg.board_net == "cnn" and board_grid(cfg.env_id) is not None):
        return True
    return observes_images(cfg)


# (env id, the env's constructor options) -> whether it observes images: the device, the learner count and
# the precision check each ask, several times in one start-up, and each answer would build an env.
_OBSERVES_IMAGES: dict[tuple[str, str], bool] = {}


def observes_images(cfg: PPOConfig) -> bool:
    """Whether cfg's env observes images (frames, MinAtar grids), from one env built per process and options."""
    kwargs = env_kwargs(cfg)
    key = (cfg.env_id, repr(kwargs))
    if key not in _OBSERVES_IMAGES:
        _OBSERVES_IMAGES[key] = is_image_space(probe_spaces(cfg.env_id, kwargs)[0])
    return _OBSERVES_IMAGES[key]


def resolve_num_learners(cfg: PPOConfig) -> int:
    if cfg.num_learners:
        return cfg.num_learners
    return max(1, torch.cuda.device_count()) if learner_device(cfg).type == "cuda" else 1


def resolve_backend(cfg: PPOConfig) -> tuple[str, int]:
    """(backend, num_workers) after 'auto': worker processes where stepping the env costs more than a
    process round trip (Atari, Box2D) and there are cores to run them; cheap envs step fastest in-process."""
    from envs.factory import is_heavy

    backend = cfg.backend
    if backend == "auto":
        backend = "multiprocess" if is_heavy(cfg.env_id) and (os.cpu_count() or 1) > 1 else "inprocess"
    return backend, cfg.num_workers or default_num_workers(backend, cfg.num_envs)


def precision_problems(cfg: PPOConfig) -> list[str]:
    """An explicit --learner-precision bfloat16 for a net without a convolutional trunk (MLPs over vectors,
    StarCraft II's FullyConv); the env's spaces are probed for image observations only then."""
    if cfg.learner_precision != "bfloat16" or cfg.board_net == "cnn":
        return []
    if not is_sc2(cfg.env_id) and observes_images(cfg):
        return []
    return [
        f"--learner-precision bfloat16 is for nets with a convolutional trunk (board games with --board-net cnn, "
        f"MinAtar, Atari); {cfg.env_id}'s net has none: use float32 or auto"
    ]


def resolve_torch_threads(cfg: PPOConfig, multithreaded: bool, backend: str, num_workers: int) -> int:
    """The learner's torch threads for --torch-threads 0: one for nets that gain nothing from more
    (multithreaded False); else every usable core, less one per local worker process when the rollouts
    run asynchronously (those workers step and act while the learner updates: Connect Four's preset on
    2 cores ran 2,286 env steps/s with a 1-thread learner beside its 1-worker process, 1,739 in-process
    on 2 threads)."""
    if cfg.torch_threads:
        return cfg.torch_threads
    if not multithreaded:
        return 1
    local_workers = backend == "multiprocess" or (backend == "ray" and cfg.ray_address is None)
    busy = num_workers if cfg.async_rollouts and local_workers else 0
    return max(1, usable_cores() - busy)


def validate(cfg: PPOConfig) -> None:
    """Raise ConfigError naming the offending settings and what would work."""
    problems = run_config_problems(cfg)
    positive = ["num_steps", "num_minibatches", "update_epochs", "grid_filters"]
    problems += [f"--{n.replace('_', '-')} must be > 0 (got {getattr(cfg, n)})" for n in positive if getattr(cfg, n) <= 0]
    if cfg.num_learners < 0:
        problems.append(f"--num-learners must be >= 0 (got {cfg.num_learners})")
    if cfg.lstm_size < 1:
        problems.append(f"--lstm-size must be >= 1 (got {cfg.lstm_size})")
    for name in ("hidden_sizes", "conv_body_sizes"):
        if any(width < 1 for width in getattr(cfg, name)):
            problems.append(f"--{name.replace('_', '-')} widths must be >= 1 (got {' '.join(map(str, getattr(cfg, name)))})")
    if is_sc2(cfg.env_id) and min(cfg.sc2.screen_size, cfg.sc2.minimap_size) < 4:
        problems.append(f"--sc2.screen-size and --sc2.minimap-size must be >= 4 (got {cfg.sc2.screen_size}, {cfg.sc2.minimap_size})")
    if is_sc2(cfg.env_id) and cfg.sc2.step_mul < 1:
        problems.append(f"--sc2.step-mul must be >= 1 (got {cfg.sc2.step_mul})")
    problems += precision_problems(cfg)
    if cfg.augment_symmetries and env_symmetries(cfg.env_id) is None:
        problems.append(f"--augment-symmetries is for games with symmetries ({', '.join(games_with_symmetries())}); {cfg.env_id} declares none")
    if is_two_player(cfg.env_id):
        problems += league_problems(cfg.league, cfg.env_id)
        if cfg.memory_lstm_size:
            problems.append("--policy-memory lstm is not supported with league self-play (two-player games) yet; use none")
        if cfg.stop_when_solved and cfg.solved_by == "training":
            problems.append(
                f"{cfg.env_id} is a two-player game, where training returns are results against the league: "
                "use --solved-by evaluation (a match against the game's reference player) or --no-stop-when-solved"
            )
    problems += atari_problems(cfg.atari)
    if cfg.save_replay_every < 0:
        problems.append(f"--save-replay-every must be >= 0 (0 saves none; got {cfg.save_replay_every})")
    if cfg.save_replay_every and is_sc2_sim(cfg.env_id):
        problems.append(f"--save-replay-every: {cfg.env_id} is simulated and has no .SC2Replay (use --capture-video)")
    elif cfg.save_replay_every and not is_sc2(cfg.env_id):
        problems.append(f"--save-replay-every is for StarCraft II envs (sc2/<map>); {cfg.env_id} has no replays")
    if not problems:
        if cfg.batch_size % cfg.num_minibatches:
            divisors = [d for d in range(1, min(cfg.batch_size, 64) + 1) if cfg.batch_size % d == 0]
            problems.append(
                f"the batch (num_envs * num_steps = {cfg.num_envs} * {cfg.num_steps} = {cfg.batch_size}) does not "
                f"split into --num-minibatches {cfg.num_minibatches}; choose one of {divisors}"
            )
        elif cfg.minibatch_size < 2 and cfg.norm_adv:
            problems.append("minibatches of 1 sample cannot normalise advantages; use fewer --num-minibatches")
        backend, workers = resolve_backend(cfg)
        if cfg.async_rollouts and backend == "inprocess":
            problems.append(
                "--async-rollouts needs workers outside the learner: --backend multiprocess or ray (or --no-async-rollouts "
                "to step the envs in-process; Connect Four's preset turns it on)"
            )
        # Each data-parallel learner gets num_envs / learners envs, split again over its workers.
        learners = resolve_num_learners(cfg)
        problems += worker_problems(cfg, backend, workers, learners)
        local_envs = cfg.num_envs // learners
        if cfg.memory_lstm_size and local_envs % cfg.num_minibatches:
            problems.append(
                f"--policy-memory lstm trains on minibatches of whole env sequences, so each learner's "
                f"{local_envs} envs must split into --num-minibatches {cfg.num_minibatches}; choose one of "
                f"{[d for d in range(1, local_envs + 1) if local_envs % d == 0]}"
            )
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if learners > gpus > 0 and learner_device(cfg).type == "cuda":
            problems.append(f"--num-learners {learners} puts each learner on a GPU of its own and this machine has {gpus}: "
                            f"use --num-learners {gpus}, or --device cpu for learners on the CPU")  # fmt: skip
        if learners > 1 and cfg.solved_by == "evaluation" and cfg.stop_when_solved:
            problems.append("--solved-by evaluation stops one learner of --num-learners > 1: use --solved-by training")
        elif learners > 1 and not problems and (cfg.num_envs // learners * cfg.num_steps) % cfg.num_minibatches:
            problems.append(
                f"each learner's batch (num_envs / num_learners * num_steps) does not split into --num-minibatches {cfg.num_minibatches}"
            )
        if cfg.total_timesteps < cfg.batch_size:
            problems.append(
                f"--total-timesteps {cfg.total_timesteps} is less than one rollout ({cfg.batch_size} steps)"
            )
    problems += self_imitation_problems(cfg)
    problems += exploration_problems(cfg)
    problems += range_problems(
        cfg, positive=("learning_rate", "clip_coef", "max_grad_norm", "sil_batch_size", "sil_capacity"),
        non_negative=("ent_coef", "vf_coef", "sil_updates", "sil_value_coef", "rnd_coef"),
        unit=("gamma", "gae_lambda", "rnd_gamma"), positive_unit=("rnd_anneal_fraction", "rnd_update_proportion"),
        optional_positive=("target_kl",),
    )  # fmt: skip
    if problems:
        raise ConfigError("; ".join(problems))


def self_imitation_problems(cfg: PPOConfig) -> list[str]:
    """What --sil-updates cannot be combined with: its replay stitches one learner's feed-forward episodes."""
    if cfg.sil_updates <= 0:
        return []
    problems = []
    if cfg.memory_lstm_size:
        problems.append("--sil-updates replays single transitions, which a policy with memory cannot act on: use --policy-memory none")
    if is_two_player(cfg.env_id):
        problems.append(f"--sil-updates is for single-player games; {cfg.env_id}'s league self-play has opponents whose returns are not the agent's")
    if resolve_num_learners(cfg) > 1:
        problems.append("--sil-updates keeps its replay in one learner: use --num-learners 1")
    if cfg.sil_capacity < cfg.sil_batch_size:
        problems.append(f"--sil-capacity {cfg.sil_capacity} is smaller than one --sil-batch-size {cfg.sil_batch_size}")
    return problems


def exploration_problems(cfg: PPOConfig) -> list[str]:
    """What --rnd-coef cannot be combined with: its networks read one observation array and learn in one learner;
    and --anneal-rnd without a bonus to decay. (The bonus's ranges are validate's range_problems, checked
    with the bonus off too, so that a typo never passes silently.)"""
    if cfg.rnd_coef <= 0:
        if cfg.anneal_rnd:
            return ["--anneal-rnd decays the exploration bonus, which is off: set --rnd-coef above 0 (0.5 is the paper's)"]
        return []
    problems = []
    if 0 < cfg.rnd_anneal_fraction < 1 and not cfg.anneal_rnd:
        problems.append("--rnd-anneal-fraction sets how fast --anneal-rnd decays the bonus: add --anneal-rnd, or leave the fraction at 1")
    if is_sc2(cfg.env_id):
        problems.append(f"--rnd-coef reads one observation array; {cfg.env_id}'s screen, minimap and player features are several: use 0")
    if resolve_num_learners(cfg) > 1:
        problems.append("--rnd-coef trains its predictor in one learner: use --num-learners 1 (or --rnd-coef 0; MinAtar Seaquest's preset sets 2.0, annealed)")
    return problems


def env_kwargs(cfg: PPOConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """What the env factory passes to the env's constructor: Atari's and StarCraft II's options, and where
    StarCraft II's replays go when the run saves them; nothing for other envs."""
    if is_atari(cfg.env_id):
        return {"options": cfg.atari}
    if not is_sc2(cfg.env_id):
        return {}
    kwargs: dict[str, Any] = {"options": cfg.sc2}
    if cfg.save_replay_every and run_dir is not None:
        kwargs.update(replay_dir=str(Path(run_dir, "replays").resolve()), save_replay_episodes=cfg.save_replay_every)
    return kwargs


def config_from_dict(data: dict) -> PPOConfig:
    return _config_from_dict(PPOConfig, data)


__all__ = ["PPOConfig", "PRESETS", "apply_preset", "parse_ppo_config", "validate"]
