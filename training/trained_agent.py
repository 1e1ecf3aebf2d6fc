"""A trained agent loaded from a run folder or checkpoint file, for the commands that play one (watch.py,
evaluate.py): the one place that knows every algorithm's checkpoint, so the training code needs no
loader of the other algorithm's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from envs.factory import check_env_id, probe_spaces
from training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    reading_contents,
    run_dir_of,
)
from training.errors import ConfigError
from training.evaluation import greedy_by_default
from training.muzero.actor import load_muzero_actor
from training.ppo.config import config_from_dict, env_kwargs
from training.ppo.train import build_agent
from training.seeds import evaluation_seed


@dataclass
class TrainedAgent:
    """A run's policy loaded from one of its checkpoints, with the config that trained it."""

    algo: str
    config: Any
    policy: torch.nn.Module
    checkpoint: Path
    run_dir: Path
    global_step: int
    payload: dict = field(repr=False, default_factory=dict)

    @property
    def env_id(self) -> str:
        return self.config.env_id

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """What the run's envs were built with (StarCraft II's options; nothing for other envs)."""
        return env_kwargs(self.config) if self.algo == "ppo" else {}

    def describe(self) -> str:
        search = ""
        if self.algo == "muzero":
            n = self.policy.search.num_simulations
            search = ", no search: the prior alone" if n == 0 else f", {n} simulations a move"
            if n and self.policy.symmetries is not None:
                search += f", averaged over the game's {len(self.policy.symmetries)} symmetries"
        return f"{self.env_id}: {self.algo.upper()} after {self.global_step} env steps{search} ({self.checkpoint})"


@dataclass
class PolicyArgs:
    """The command-line options that say which trained policy to play and how (watch.py, evaluate.py)."""

    run: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="RUN")]
    """a run folder (its newest checkpoint is used) or a checkpoint file"""
    best: bool = False
    """use the run's best checkpoint by training-time evaluation (checkpoints/best.pt)"""
    stochastic: bool = False
    """sample actions from the policy instead of taking the most likely one (default: as the run's own evaluations did: sampled on Atari, greedy elsewhere unless it set --eval-stochastic)"""
    greedy: bool = False
    """take the most likely actions even where the run's evaluations sampled (Atari's default)"""
    seed: int | None = None
    """seed of the first episode (episode i uses seed + i); default: the run's evaluation seed, as in training"""
    num_simulations: int | None = None
    """MuZero runs: search with this many simulations a move instead of the run's own; 0 = no search, the model's prior alone (whether the search improves on the policy the model learned)"""
    symmetric_search: Literal["as-trained", "on", "off"] = "as-trained"
    """MuZero runs of games with symmetries (envs/symmetries.py): 'on' averages each search over the position's symmetric copies, 'off' searches the position alone, 'as-trained' does what the run's evaluations did (its --symmetric-search)"""

    def load(self) -> tuple[TrainedAgent, int]:
        """The trained agent and the seed of the first episode."""
        if self.num_simulations is not None and self.num_simulations < 0:
            raise ConfigError(f"--num-simulations must be >= 0 (0 = the prior alone; got {self.num_simulations})")
        if self.stochastic and self.greedy:
            raise ConfigError("--stochastic and --greedy contradict each other: give one (or neither: as the run evaluated)")
        symmetric = None if self.symmetric_search == "as-trained" else self.symmetric_search == "on"
        trained = load_trained_agent(self.run, best=self.best, num_simulations=self.num_simulations,
                                     symmetric_search=symmetric)  # fmt: skip
        return trained, self.seed if self.seed is not None else evaluation_seed(trained.config.seed)

    def deterministic(self, trained: TrainedAgent) -> bool:
        """Whether to play the most likely actions: --greedy or --stochastic, else as the run's evaluations."""
        choice = True if self.stochastic else False if self.greedy else getattr(trained.config, "eval_stochastic", None)
        return greedy_by_default(trained.env_id, choice)


def load_trained_agent(path: str | Path, best: bool = False, num_simulations: int | None = None,
                       symmetric_search: bool | None = None) -> TrainedAgent:  # fmt: skip
    """The policy of a run folder's newest checkpoint (its best with best=True) or of a checkpoint file,
    rebuilt from the run's saved config on the CPU. Observation normalisation travels with the weights.
    num_simulations and symmetric_search (None: as the run evaluated) replace a MuZero run's search
    settings (refused for other agents)."""
    checkpoint = find_checkpoint(path, best=best)
    payload = load_checkpoint(checkpoint)
    algo = payload.get("algo")
    if num_simulations is not None and algo != "muzero":
        raise ConfigError(f"--num-simulations is for MuZero runs; {checkpoint} holds a '{algo}' agent")
    if symmetric_search is not None and algo != "muzero":
        raise ConfigError(f"--symmetric-search is for MuZero runs; {checkpoint} holds a '{algo}' agent")
    if algo == "ppo":
        with reading_contents(checkpoint):
            cfg = config_from_dict(json.loads(payload["config"]))
            check_env_id(cfg.env_id)
            policy = build_agent(cfg, *probe_spaces(cfg.env_id, env_kwargs(cfg)))
            policy.load_state_dict(payload["learner"]["model"])
    elif algo == "muzero":
        with reading_contents(checkpoint):
            cfg, policy = load_muzero_actor(payload, num_simulations, symmetric_search)
    else:
        raise CheckpointError(f"{checkpoint} holds a '{algo}' agent, which this version cannot play")
    policy.eval()
    with reading_contents(checkpoint):
        step = int(payload["global_step"])
    return TrainedAgent(algo, cfg, policy, checkpoint, run_dir_of(checkpoint), step, payload)
