"""MuZero's Monte-Carlo tree search (Schrittwieser et al. 2020, appendix B), batched over many roots:
the generic loop. Which action a node takes is a policy's business (agents.muzero.policies: pUCT with
Dirichlet noise, or Gumbel MuZero), as in mctx's search.py and policies.py.

The trees live in preallocated arrays of shape [B, num_simulations + 1, ...] (mctx's layout): node 0 is
the root, and simulation s adds node s. Each simulation does, for all B roots at once:
  1. selection: the policy walks down from the root until an action whose child is not expanded yet;
  2. expansion: one call of the learned model (dynamics + prediction) for all B leaves;
  3. backup: add the leaf's value to every node on the path, discounting and adding rewards on the way.
The expansion and the backup walk each tree node by node in small loops compiled by numba (`_expand`,
`_backup`), as pUCT's selection does: per node they cost nanoseconds, where numpy's per-call overhead
over [B]-sized arrays cost microseconds per tree level.

Values are from the perspective of the player to move. In two-player zero-sum games (`two_player=True`)
the players alternate, so a child's value counts negatively for its parent: the discount is -gamma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numba
import numpy as np
import torch


class RootFnOutput(NamedTuple):
    """The model's initial inference for B roots."""

    embedding: torch.Tensor  # [B, ...] hidden states
    prior_logits: np.ndarray  # [B, A]
    value: np.ndarray  # [B]


class RecurrentFnOutput(NamedTuple):
    """The model's step from B hidden states, each with one action."""

    reward: np.ndarray  # [B]
    embedding: torch.Tensor  # [B, ...] next hidden states
    prior_logits: np.ndarray  # [B, A]
    value: np.ndarray  # [B]


# (embeddings [B, ...], actions [B]) -> RecurrentFnOutput
RecurrentFn = Callable[[torch.Tensor, torch.Tensor], RecurrentFnOutput]
# (tree, simulation s, leaf_parent [B], leaf_action [B]): the policy's selection writes, for every tree,
# the expanded node and the action whose child simulation s adds.
SelectLeaves = Callable[["Tree", int, np.ndarray, np.ndarray], None]


@dataclass
class SearchConfig:
    num_simulations: int = 50
    discount: float = 0.997
    pb_c_init: float = 1.25
    """c1 of the pUCT rule"""
    pb_c_base: float = 19652.0
    """c2 of the pUCT rule"""
    parent_mean_q: bool = False
    """pUCT: unvisited children count the parent's mean Q (EfficientZero) instead of the tree's minimum"""
    dirichlet_alpha: float = 0.25
    root_exploration_fraction: float = 0.25
    """share of Dirichlet noise in the root's prior (0 for evaluation; unused by the Gumbel search)"""
    two_player: bool = False
    gumbel: bool = False
    """Gumbel MuZero's root (sequential halving) and interior selection instead of pUCT"""
    max_considered_actions: int = 16
    """m: actions the Gumbel root considers"""
    gumbel_scale: float = 1.0
    """scale of the Gumbel noise (0 for a deterministic evaluation)"""
    c_visit: float = 50.0
    """sigma(q) = (c_visit + max_b N(b)) * c_scale * q"""
    c_scale: float = 0.1
    gumbel_q_range: Literal["children", "tree"] = "children"
    """what Gumbel's sigma scales Q to [0, 1] by: the extremes among a node's children (mctx) or over the whole tree"""


@dataclass
class Tree:
    """B trees of up to N nodes over A actions."""

    visits: np.ndarray  # [B, N]   N(s)
    value_sum: np.ndarray  # [B, N]   sum of backed-up values; V(s) = value_sum / visits
    reward: np.ndarray  # [B, N]   reward received on entering the node
    prior: np.ndarray  # [B, N, A] P(s, a) over the node's children
    children: np.ndarray  # [B, N, A] child node index, -1 while unexpanded
    parent: np.ndarray  # [B, N]
    action: np.ndarray  # [B, N]   the action that led from the parent
    embeddings: np.ndarray  # [B, N, ...] hidden states (numpy: gathering a batch of them costs less than in torch)
    min_q: np.ndarray  # [B] smallest Q seen in the tree (for normalisation)
    max_q: np.ndarray  # [B]
    raw_value: np.ndarray  # [B, N] the model's value estimate at expansion (Gumbel's mixed value)

    @classmethod
    def allocate(cls, batch: int, num_nodes: int, num_actions: int, root_embedding: torch.Tensor) -> Tree:
        embeddings = np.zeros((batch, num_nodes, *root_embedding.shape[1:]), dtype=np.asarray(root_embedding).dtype)
        return cls(
            visits=np.zeros((batch, num_nodes), np.int32),
            value_sum=np.zeros((batch, num_nodes), np.float64),
            reward=np.zeros((batch, num_nodes), np.float64),
            prior=np.zeros((batch, num_nodes, num_actions), np.float64),
            children=np.full((batch, num_nodes, num_actions), -1, np.int32),
            parent=np.full((batch, num_nodes), -1, np.int32),
            action=np.full((batch, num_nodes), -1, np.int32),
            embeddings=embeddings,
            min_q=np.full(batch, np.inf),
            max_q=np.full(batch, -np.inf),
            raw_value=np.zeros((batch, num_nodes), np.float64),
        )

    def value(self, b: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        return self.value_sum[b, nodes] / np.maximum(self.visits[b, nodes], 1)


@numba.njit(cache=True)
def _backup(visits, value_sum, reward, parent, min_q, max_q, discount, leaf, leaf_value):
    """3. Backup in every tree b from its new leaf to the root: each node on the path gets one visit and
    the return g seen from it (the leaf's value, then r + discount * g one level up), and the Q of the
    action that led to it updates the tree's min/max for normalisation."""
    for b in range(visits.shape[0]):
        node, g = leaf, leaf_value[b]
        while True:
            value_sum[b, node] += g
            visits[b, node] += 1
            if node == 0:
                break
            q = reward[b, node] + discount * value_sum[b, node] / visits[b, node]
            min_q[b] = min(min_q[b], q)
            max_q[b] = max(max_q[b], q)
            g = reward[b, node] + discount * g
            node = parent[b, node]


@numba.njit(cache=True)
def _expand(children, parent, action, reward, raw_value, prior, sim, leaf_parent, leaf_action, leaf_reward,
            leaf_value, leaf_logits):  # fmt: skip
    """2. Expansion in every tree b: node `sim` becomes the child of (leaf_parent, leaf_action) with the
    model's reward, value and prior (the softmax of its logits)."""
    batch, num_actions = leaf_logits.shape
    for b in range(batch):
        children[b, leaf_parent[b], leaf_action[b]] = sim
        parent[b, sim], action[b, sim] = leaf_parent[b], leaf_action[b]
        reward[b, sim], raw_value[b, sim] = leaf_reward[b], leaf_value[b]
        top = leaf_logits[b].max()
        total = 0.0
        for a in range(num_actions):
            prior[b, sim, a] = np.exp(leaf_logits[b, a] - top)
            total += prior[b, sim, a]
        for a in range(num_actions):
            prior[b, sim, a] /= total


def signed_discount(cfg: SearchConfig) -> float:
    """The discount from a child's value to its parent's: -gamma when the players alternate."""
    return -cfg.discount if cfg.two_player else cfg.discount


def children_q(tree: Tree, b: np.ndarray, nodes: np.ndarray, cfg: SearchConfig) -> tuple[np.ndarray, np.ndarray]:
    """(Q(s, a), N(s, a)) of the children of nodes[i] in tree b[i], [k, A]; Q is 0 where unvisited."""
    children = tree.children[b, nodes]
    expanded = children >= 0
    safe, rows = np.where(expanded, children, 0), b[:, None]
    visits = np.where(expanded, tree.visits[rows, safe], 0)
    q = tree.reward[rows, safe] + signed_discount(cfg) * tree.value_sum[rows, safe] / np.maximum(visits, 1)
    return np.where(visits > 0, q, 0.0), visits


def init_tree(root: RootFnOutput, root_prior: np.ndarray, num_simulations: int) -> Tree:
    """B trees holding their roots: the hidden states, the policy's root prior [B, A] and the value. The
    root starts with one visit worth its own value estimate (as mctx does), so the first selection
    already follows the prior instead of a tie."""
    batch, num_actions = root_prior.shape
    tree = Tree.allocate(batch, num_simulations + 1, num_actions, root.embedding)
    tree.embeddings[:, 0] = np.asarray(root.embedding)
    tree.prior[:, 0] = root_prior
    tree.visits[:, 0] = 1
    tree.value_sum[:, 0] = tree.raw_value[:, 0] = root.value
    return tree


def search(tree: Tree, recurrent_fn: RecurrentFn, select_leaves: SelectLeaves, cfg: SearchConfig) -> Tree:
    """cfg.num_simulations simulations in every tree of `tree` (made by init_tree), selecting with the
    policy's select_leaves; the tree is filled in place and returned."""
    batch = tree.visits.shape[0]
    all_b = np.arange(batch)
    discount = signed_discount(cfg)
    leaf_parent = np.zeros(batch, np.int64)
    leaf_action = np.zeros(batch, np.int64)
    for sim in range(1, cfg.num_simulations + 1):
        # 1. Selection of one leaf per tree.
        select_leaves(tree, sim, leaf_parent, leaf_action)

        # 2. Expansion: one model call for every tree's new leaf.
        reward, embedding, logits, value = recurrent_fn(
            torch.from_numpy(tree.embeddings[all_b, leaf_parent]), torch.from_numpy(leaf_action)
        )
        value = np.asarray(value, np.float64)
        _expand(tree.children, tree.parent, tree.action, tree.reward, tree.raw_value, tree.prior, sim, leaf_parent,
                leaf_action, np.asarray(reward, np.float64), value, np.asarray(logits, np.float64))  # fmt: skip
        tree.embeddings[:, sim] = np.asarray(embedding)

        # 3. Backup from the leaf to the root.
        _backup(tree.visits, tree.value_sum, tree.reward, tree.parent, tree.min_q, tree.max_q, discount, sim, value)
    return tree
