"""PPO's self-imitation replay (`--sil-updates`; the loss is agents.self_imitation's): every rollout's
steps are stitched, env by env, into the episodes they belong to (an episode spans many rollouts); once
one ends, its transitions (s, a, R) enter a prioritised ring buffer, and after each PPO update the learner
takes a few minibatch steps of the SIL loss on samples from it.

Only the learner holds the replay: workers send the rollouts they always send. The replay's stored
transitions travel in the periodic checkpoints, so `--resume` goes on with them; episodes still in
progress at the checkpoint are dropped, as a resumed run's envs start fresh episodes anyway.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agents.ppo import NonFiniteUpdate
from agents.precision import reduced_precision
from agents.self_imitation import discounted_returns, sil_loss

# Prioritised replay's exponents in the SIL paper (Oh et al. 2018, appendix: alpha 0.6, beta 0.1).
PRIORITY_ALPHA = 0.6
IMPORTANCE_BETA = 0.1
PRIORITY_EPS = 1e-6


class SelfImitationReplay:
    """The last `capacity` transitions of finished episodes: observations (under their rollout keys),
    actions, discounted returns R (of the rewards the learner trains on, scaled if it scales them) and
    priorities (R - V(s))_+, V first the acting policy's value, then the learner's when it samples them."""

    def __init__(self, capacity: int, num_envs: int, gamma: float):
        if capacity < 1:
            raise ValueError(f"the self-imitation replay needs capacity >= 1 (got {capacity})")
        self.capacity, self.gamma = capacity, gamma
        self.pending: list[list[dict[str, np.ndarray]]] = [[] for _ in range(num_envs)]
        self.storage: dict[str, np.ndarray] = {}  # "obs/<key>", "actions", "returns", "priorities": [capacity, ...]
        self.size = 0
        self.next = 0  # where the next transition goes (the oldest leaves first)
        self.episodes_added = 0

    def add_rollout(self, obs: dict[str, np.ndarray], actions: np.ndarray, rewards: np.ndarray, values: np.ndarray,
                    terminated: np.ndarray, truncated: np.ndarray, bootstrap_values: np.ndarray) -> None:  # fmt: skip
        """A rollout's [T, N] steps (obs [T, N, ...]); episodes that end in it enter the replay."""
        fields = {**{f"obs/{k}": v for k, v in obs.items()}, "actions": actions, "rewards": rewards, "values": values}
        done = (terminated > 0) | (truncated > 0)
        T, N = rewards.shape
        for n in range(N):
            start = 0
            for t in np.flatnonzero(done[:, n]):
                self.pending[n].append({k: v[start : t + 1, n].copy() for k, v in fields.items()})
                # A time limit cut the episode: what follows is worth V(final obs), not 0.
                cut = truncated[t, n] > 0 and not terminated[t, n] > 0
                self._finish_episode(n, float(bootstrap_values[t, n]) if cut else 0.0)
                start = t + 1
            if start < T:
                self.pending[n].append({k: v[start:, n].copy() for k, v in fields.items()})

    def _finish_episode(self, env: int, bootstrap: float) -> None:
        chunks, self.pending[env] = self.pending[env], []
        episode = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        returns = discounted_returns(episode.pop("rewards"), self.gamma, bootstrap)
        values = episode.pop("values")
        episode["returns"] = returns.astype(np.float32)
        episode["priorities"] = np.maximum(returns - values, 0.0)
        self._store({k: v[-self.capacity :] for k, v in episode.items()})  # an episode longer than the replay: its end
        self.episodes_added += 1

    def _store(self, transitions: dict[str, np.ndarray]) -> None:
        length = len(transitions["returns"])
        if not self.storage:
            self.storage = {k: np.zeros((self.capacity, *v.shape[1:]), v.dtype) for k, v in transitions.items()}
        slots = (self.next + np.arange(length)) % self.capacity
        for k, v in transitions.items():
            self.storage[k][slots] = v
        self.next = int((self.next + length) % self.capacity)
        self.size = min(self.size + length, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """(slots [B], their stored fields, importance weights [B] divided by the largest), drawn with
        probability ~ (priority + eps)^alpha by `generator` (the learner's, so a resumed run repeats it)."""
        scaled = (self.storage["priorities"][: self.size] + PRIORITY_EPS) ** PRIORITY_ALPHA
        probs = scaled / scaled.sum()
        slots = torch.multinomial(torch.from_numpy(probs), batch_size, replacement=True, generator=generator).numpy()
        weights = (self.size * probs[slots]) ** -IMPORTANCE_BETA
        return slots, {k: v[slots] for k, v in self.storage.items()}, weights / weights.max()

    def update_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        self.storage["priorities"][slots] = priorities

    def state_dict(self) -> dict:
        """The stored transitions as tensors (torch.load's weights_only reads them back)."""
        return {"size": self.size, "next": self.next, "episodes_added": self.episodes_added,
                "storage": {k: torch.from_numpy(v[: self.size].copy()) for k, v in self.storage.items()}}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.size, self.next, self.episodes_added = int(state["size"]), int(state["next"]), int(state["episodes_added"])
        self.storage = {}
        for k, v in state["storage"].items():
            array = v.numpy()
            self.storage[k] = np.zeros((self.capacity, *array.shape[1:]), array.dtype)
            self.storage[k][: len(array)] = array
        self.pending = [[] for _ in self.pending]


def self_imitation_update(agent: nn.Module, optimizer: torch.optim.Optimizer, replay: SelfImitationReplay, steps: int,
                          batch_size: int, value_coef: float, max_grad_norm: float, generator: torch.Generator,
                          device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:  # fmt: skip
    """`steps` minibatch steps of the SIL loss on samples of the replay (none while it is empty); the
    mean statistics. Raises NonFiniteUpdate on a NaN or inf loss or gradient, as PPO's update does."""
    if replay.size == 0:
        return {}
    params = [p for p in agent.parameters() if p.requires_grad]
    history = []
    for _ in range(steps):
        slots, sampled, weights = replay.sample(batch_size, generator)
        obs = {k[4:]: torch.as_tensor(v).to(device) for k, v in sampled.items() if k.startswith("obs/")}
        with reduced_precision(device, autocast_dtype):
            dist, value, _ = agent(obs, None, None)
        loss, stats, priorities = sil_loss(
            dist.log_prob(torch.as_tensor(sampled["actions"]).to(device)).float(), value.float(),
            torch.as_tensor(sampled["returns"]).to(device), torch.as_tensor(weights, dtype=torch.float32).to(device),
            value_coef,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
        if not torch.isfinite(loss.detach() + grad_norm):
            raise NonFiniteUpdate(f"self-imitation loss {loss.item()}, gradient norm {grad_norm.item()}")
        optimizer.step()
        replay.update_priorities(slots, priorities.cpu().numpy())
        history.append(stats)
    means = {k: torch.stack([h[k] for h in history]).mean().item() for k in history[0]}
    means["sil_replay_size"] = float(replay.size)
    return means
