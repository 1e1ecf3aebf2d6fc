"""MuZero's search as an acting policy (PPO's act interface), for evaluation, videos and watching, and
loading it from a checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import torch
from torch import nn

from agents.muzero.networks import MuZeroNet, root_inference, search_callback
from agents.muzero.policies import run_policy_over_symmetries
from agents.muzero.search import SearchConfig
from envs.factory import check_env_id
from envs.symmetries import Symmetries, env_symmetries, games_with_symmetries
from training.errors import ConfigError
from training.muzero.config import MuZeroConfig, build_model, search_config, search_symmetries
from training.run_config import config_from_dict


class MuZeroActor(nn.Module):
    """The search as a policy with PPO's acting interface, for evaluation and watching: greedy (most
    visited, or Gumbel's noiseless choice) when deterministic, else sampled from the visits."""

    def __init__(self, model: MuZeroNet, search: SearchConfig, seed: int = 0, symmetries: Symmetries | None = None):
        super().__init__()
        self.model, self.search, self.symmetries = model, search, symmetries
        self.rng = np.random.default_rng(seed)
        self.last_result = None

    @torch.inference_mode()
    def act(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None, deterministic: bool = True):
        mask = obs.get("action_mask")
        features = obs["obs"].cpu().numpy()
        if self.search.num_simulations == 0:
            return self._act_on_prior(features, None if mask is None else mask.cpu().numpy().astype(bool), deterministic)
        search = dataclasses.replace(self.search, root_exploration_fraction=0.0,
                                     gumbel_scale=0.0 if deterministic else self.search.gumbel_scale)  # fmt: skip
        result = run_policy_over_symmetries(functools.partial(root_inference, self.model), search_callback(self.model),
                                            search, self.rng, features, self.symmetries,
                                            None if mask is None else mask.cpu().numpy().astype(bool), greedy=deterministic)  # fmt: skip
        self.last_result = result
        action = result.action
        n = len(action)
        return torch.as_tensor(action), torch.zeros(n), torch.as_tensor(result.root_value, dtype=torch.float32)

    def _act_on_prior(self, features: np.ndarray, mask: np.ndarray | None, deterministic: bool):
        """No search: the model's prior alone (its most likely legal action, or a sample from it). Set
        with num_simulations 0, to see what the search adds to the policy the model has learned."""
        root = root_inference(self.model, features)
        logits = root.prior_logits if mask is None else np.where(mask, root.prior_logits, -np.inf)
        if deterministic:
            action = logits.argmax(-1)
        else:
            gumbel = self.rng.gumbel(size=logits.shape)  # Gumbel-max: a sample from softmax(logits)
            action = (logits + gumbel).argmax(-1)
        self.last_result = None
        n = len(action)
        return torch.as_tensor(action), torch.zeros(n), torch.as_tensor(root.value, dtype=torch.float32)

    def search_summary(self) -> list[str]:
        """The last search of the first root, as overlay lines: root visit counts and Q per action."""
        if self.last_result is None:
            return []
        r = self.last_result
        visits = " ".join(str(int(v)) for v in r.visit_counts[0])
        if self.symmetries is not None:  # the visits of the position's searches and its copies', summed
            visits += f" ({len(self.symmetries)} searches)"
        q = " ".join(f"{v:.2f}" for v in r.q_values[0])
        return [f"root value {r.root_value[0]:.2f}", f"visits {visits}", f"Q {q}"]


def load_muzero_actor(payload: dict, num_simulations: int | None = None,
                      symmetric_search: bool | None = None) -> tuple[MuZeroConfig, MuZeroActor]:  # fmt: skip
    """A MuZero checkpoint's config and its search as a policy (for watch.py and evaluate.py), with the
    run's simulations per move or num_simulations (0: the model's prior alone, no search), and averaged
    over the game's symmetries as the run's evaluations were, or as symmetric_search says."""
    cfg = config_from_dict(MuZeroConfig, json.loads(payload["config"]))
    check_env_id(cfg.env_id)
    if symmetric_search is not None:
        if symmetric_search and env_symmetries(cfg.env_id) is None:
            raise ConfigError(f"--symmetric-search on: {cfg.env_id} declares no symmetries (envs/symmetries.py: "
                              f"{', '.join(games_with_symmetries())})")  # fmt: skip
        cfg = dataclasses.replace(cfg, symmetric_search="evaluation" if symmetric_search else "off")
    model = build_model(cfg)
    model.load_state_dict(payload["model"])
    search = search_config(cfg)
    if num_simulations is not None:
        search = dataclasses.replace(search, num_simulations=num_simulations)
    return cfg, MuZeroActor(model, search, seed=cfg.seed, symmetries=search_symmetries(cfg, self_play=False))
