"""A game's symmetries: maps of observations and actions under which its rules, rewards and ends do not
change, so a learner can train on transformed copies of what it played (AlphaGo Zero's eight Go boards,
the left-right mirror of legged robots in rsl_rl).

A symmetry g maps a flat observation o to obs_signs[g] * o[obs_perms[g]] and a distribution p over actions
to p[action_perms[g]]; action a becomes argsort(action_perms[g])[a]. The identity comes first.

- Board games (envs.board_games.board_symmetries): permutations of cells, signs all +1.
- CartPole: the mirror x -> -x negates the whole state (x, x', theta, theta') and swaps the two pushes.
  The dynamics are odd in the state and the force, the ends are |x| > 2.4 and |theta| > 12 degrees and the
  start is uniform on [-0.05, 0.05]^4: the mirrored game is a game of the same law.
- Acrobot: the mirror negates both angles (cos stays, sin and the angular velocities flip) and swaps the
  torques -1 and +1; gravity and the goal height (-cos t1 - cos(t1 + t2)) are even in the angles.
- LunarLander (discrete): the mirror about the helipad's vertical negates x, x', the angle and its rate,
  swaps the legs' contact flags and the two side engines (actions 1 and 3). Its law is mirrored too, not
  each game: the terrain's heights, the start's push and the engines' dispersion are random, each drawn
  from a distribution the mirror maps onto itself (tests/test_symmetries.py mirrors the draws and steps
  both games). Box2D solves the legs' joints one after the other, so the two games agree to ~1e-2, not
  to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.board_games import BOARD_OPPONENTS, board_symmetries


@dataclass(frozen=True)
class Symmetries:
    obs_perms: np.ndarray  # [S, obs_size] int: g's observation is obs_signs[g] * o[obs_perms[g]]
    obs_signs: np.ndarray  # [S, obs_size] float32, +-1
    action_perms: np.ndarray  # [S, A] int: g's distribution over actions is p[action_perms[g]]

    def __len__(self) -> int:
        return len(self.obs_perms)

    def transformed(self, obs: np.ndarray, g: np.ndarray) -> np.ndarray:
        """[B, ...]: observation b of obs [B, ...] seen through symmetry g[b] (g [B] int)."""
        flat = obs.reshape(len(obs), -1)
        turned = np.take_along_axis(flat, self.obs_perms[g], 1) * self.obs_signs[g].astype(flat.dtype)
        return turned.reshape(obs.shape)

    def observation_copies(self, obs: np.ndarray) -> np.ndarray:
        """[S * B, ...]: every observation of obs [B, ...] seen through every symmetry, one symmetry after
        the other (the B observations themselves first)."""
        g = np.repeat(np.arange(len(self)), len(obs))
        return self.transformed(np.tile(obs, (len(self),) + (1,) * (obs.ndim - 1)), g)

    def action_mask_copies(self, mask: np.ndarray) -> np.ndarray:
        """[S * B, A]: the legal actions mask [B, A] of every copy, in observation_copies' order."""
        return mask[:, self.action_perms].swapaxes(0, 1).reshape(-1, mask.shape[1])


def _mirror(signs: list[float], action_perm: list[int], obs_perm: list[int] | None = None) -> Symmetries:
    """The identity and one mirror that moves observation entries (obs_perm; default: none moves), flips
    their signs and permutes the actions."""
    n, num_actions = len(signs), len(action_perm)
    return Symmetries(np.array([range(n), obs_perm or range(n)]), np.array([[1.0] * n, signs], np.float32),
                      np.array([range(num_actions), action_perm]))  # fmt: skip


# Keyed by the Gymnasium id without its version: the versions of these games differ in limits, not dynamics.
_MIRRORS = {
    "CartPole": _mirror([-1, -1, -1, -1], [1, 0]),
    "Acrobot": _mirror([1, -1, 1, -1, -1, -1], [2, 1, 0]),
    # x, y, x', y', angle, its rate, the legs' contacts; noop, left engine, main engine, right engine
    "LunarLander": _mirror([-1, 1, -1, 1, -1, -1, 1, 1], [0, 3, 2, 1], obs_perm=[0, 1, 2, 3, 4, 5, 7, 6]),
}


def games_with_symmetries() -> list[str]:
    """The games env_symmetries knows, for messages: board games by id, the others by name (any version)."""
    return [*(game for game in BOARD_OPPONENTS if board_symmetries(game) is not None), *_MIRRORS]


def env_symmetries(env_id: str) -> Symmetries | None:
    """The symmetries env_id declares, or None."""
    board = board_symmetries(env_id)
    if board is not None:
        obs_perms, action_perms = board
        return Symmetries(obs_perms, np.ones(obs_perms.shape, np.float32), action_perms)
    return _MIRRORS.get(env_id.rsplit("-v", 1)[0])
