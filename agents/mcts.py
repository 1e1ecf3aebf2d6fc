"""MuZero's Monte-Carlo tree search (Schrittwieser et al. 2020, appendix B), batched over many roots.

The trees live in preallocated arrays of shape [B, num_simulations + 1, ...] (mctx's layout): node 0 is
the root, and simulation s adds node s. Each simulation does, for all B roots at once:
  1. selection: walk down from the root by pUCT until an action whose child is not expanded yet;
  2. expansion: one call of the learned model (dynamics + prediction) for all B leaves;
  3. backup: add the leaf's value to every node on the path, discounting and adding rewards on the way.
Python loops only over simulations and tree depth; everything inside them is array work over the batch.

Values are from the perspective of the player to move. In two-player zero-sum games (`two_player=True`)
the players alternate, so a child's value counts negatively for its parent: the discount is -gamma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# (embeddings [B, ...], actions [B]) -> (rewards [B], next embeddings [B, ...], prior logits [B, A], values [B])
RecurrentFn = Callable[[torch.Tensor, torch.Tensor], tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]]


@dataclass
class SearchConfig:
    num_simulations: int = 50
    discount: float = 0.997
    pb_c_init: float = 1.25
    """c1 of the pUCT rule"""
    pb_c_base: float = 19652.0
    """c2 of the pUCT rule"""
    dirichlet_alpha: float = 0.25
    root_exploration_fraction: float = 0.25
    """share of Dirichlet noise in the root's prior (0 for evaluation)"""
    two_player: bool = False


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
    embeddings: torch.Tensor  # [B, N, ...] hidden states
    min_q: np.ndarray  # [B] smallest Q seen in the tree (for normalisation)
    max_q: np.ndarray  # [B]

    @classmethod
    def allocate(cls, batch: int, num_nodes: int, num_actions: int, root_embedding: torch.Tensor) -> Tree:
        embeddings = root_embedding.new_zeros((batch, num_nodes, *root_embedding.shape[1:]))
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
        )

    def value(self, b: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        return self.value_sum[b, nodes] / np.maximum(self.visits[b, nodes], 1)


@dataclass
class SearchResult:
    visit_counts: np.ndarray  # [B, A] visits of the root's children
    policy: np.ndarray  # [B, A] visit counts normalised: the improved policy (the training target)
    root_value: np.ndarray  # [B] mean value backed up into the root
    q_values: np.ndarray  # [B, A] Q(root, a) = r + discount * V(child); 0 where unvisited
    tree: Tree


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _normalize_q(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    # Q values of any scale are brought to [0, 1] by the extremes seen in the tree so far, so that c1 and
    # c2 work for every game (MuZero's MinMaxStats); until two distinct values exist Q is used as it is.
    spread = hi - lo
    return np.where(spread > 0, (q - lo) / np.where(spread > 0, spread, 1), q)


def select_actions(tree: Tree, b: np.ndarray, nodes: np.ndarray, cfg: SearchConfig, root_mask: np.ndarray | None,
                   tie_noise: np.ndarray) -> np.ndarray:  # fmt: skip
    """pUCT at nodes[i] of tree b[i]: argmax_a Q_norm(s, a) + P(s, a) sqrt(N(s)) / (1 + N(s, a)) (c1 + log((N(s) + c2 + 1) / c2))."""
    children = tree.children[b, nodes]  # [k, A]
    expanded = children >= 0
    safe = np.where(expanded, children, 0)
    rows = b[:, None]
    child_visits = np.where(expanded, tree.visits[rows, safe], 0)
    discount = -cfg.discount if cfg.two_player else cfg.discount
    q = tree.reward[rows, safe] + discount * tree.value_sum[rows, safe] / np.maximum(child_visits, 1)
    # Unvisited children score 0 for Q (the paper's choice): the prior term alone decides whether to try them.
    q_norm = np.where(child_visits > 0, _normalize_q(q, tree.min_q[b, None], tree.max_q[b, None]), 0.0)
    parent_visits = tree.visits[b, nodes][:, None].astype(np.float64)
    pb_c = cfg.pb_c_init + np.log((parent_visits + cfg.pb_c_base + 1) / cfg.pb_c_base)
    score = q_norm + pb_c * np.sqrt(parent_visits) / (1 + child_visits) * tree.prior[b, nodes] + tie_noise
    if root_mask is not None:
        score = np.where((nodes == 0)[:, None] & ~root_mask[b], -np.inf, score)
    return score.argmax(-1)


def run_search(
    root_embedding: torch.Tensor,
    root_prior_logits: np.ndarray,
    root_value: np.ndarray,
    recurrent_fn: RecurrentFn,
    cfg: SearchConfig,
    rng: np.random.Generator,
    valid_actions: np.ndarray | None = None,
) -> SearchResult:
    """Search from B roots, given the model's initial inference for them (hidden state, prior logits
    [B, A], value [B]). valid_actions [B, A] (bool) removes actions at the root: they get no visits."""
    batch, num_actions = root_prior_logits.shape
    tree = Tree.allocate(batch, cfg.num_simulations + 1, num_actions, root_embedding)
    all_b = np.arange(batch)
    tree.embeddings[:, 0] = root_embedding
    prior = _softmax(np.asarray(root_prior_logits, np.float64))
    if valid_actions is not None:
        prior = np.where(valid_actions, prior, 0.0)
        prior /= prior.sum(-1, keepdims=True)
    if cfg.root_exploration_fraction > 0:
        noise = rng.dirichlet(np.full(num_actions, cfg.dirichlet_alpha), size=batch)
        if valid_actions is not None:
            noise = np.where(valid_actions, noise, 0.0)
            noise /= noise.sum(-1, keepdims=True)
        prior = (1 - cfg.root_exploration_fraction) * prior + cfg.root_exploration_fraction * noise
    tree.prior[:, 0] = prior
    # The root starts with one visit worth its own value estimate (as mctx does), so the first
    # selection already follows the prior instead of a tie.
    tree.visits[:, 0] = 1
    tree.value_sum[:, 0] = root_value
    discount = -cfg.discount if cfg.two_player else cfg.discount

    for sim in range(1, cfg.num_simulations + 1):
        # 1. Selection, all trees at once, one tree level per pass.
        node = np.zeros(batch, np.int64)
        leaf_parent = np.zeros(batch, np.int64)
        leaf_action = np.zeros(batch, np.int64)
        active = all_b
        while active.size:
            tie_noise = rng.uniform(0, 1e-9, (active.size, num_actions))
            actions = select_actions(tree, active, node[active], cfg, valid_actions, tie_noise)
            child = tree.children[active, node[active], actions]
            done = child < 0
            leaf_parent[active[done]] = node[active[done]]
            leaf_action[active[done]] = actions[done]
            node[active[~done]] = child[~done]
            active = active[~done]

        # 2. Expansion: one model call for every tree's new leaf.
        reward, embedding, logits, value = recurrent_fn(
            tree.embeddings[all_b, leaf_parent], torch.as_tensor(leaf_action)
        )
        tree.children[all_b, leaf_parent, leaf_action] = sim
        tree.parent[:, sim], tree.action[:, sim] = leaf_parent, leaf_action
        tree.reward[:, sim] = reward
        tree.prior[:, sim] = _softmax(np.asarray(logits, np.float64))
        tree.embeddings[:, sim] = embedding

        # 3. Backup from the leaf to the root: each node's value, then the parent's return through it.
        node = np.full(batch, sim, np.int64)
        g = np.asarray(value, np.float64)
        active = all_b
        while active.size:
            n = node[active]
            tree.value_sum[active, n] += g[active]
            tree.visits[active, n] += 1
            not_root = n > 0
            active, n = active[not_root], n[not_root]
            q = tree.reward[active, n] + discount * tree.value(active, n)
            tree.min_q[active] = np.minimum(tree.min_q[active], q)
            tree.max_q[active] = np.maximum(tree.max_q[active], q)
            g[active] = tree.reward[active, n] + discount * g[active]
            node[active] = tree.parent[active, n]

    root_children = tree.children[:, 0]
    expanded = root_children >= 0
    safe = np.where(expanded, root_children, 0)
    visit_counts = np.where(expanded, tree.visits[all_b[:, None], safe], 0)
    q_values = np.where(visit_counts > 0, tree.reward[all_b[:, None], safe]
                        + discount * tree.value_sum[all_b[:, None], safe] / np.maximum(visit_counts, 1), 0.0)  # fmt: skip
    policy = visit_counts / np.maximum(visit_counts.sum(-1, keepdims=True), 1)
    return SearchResult(visit_counts, policy, tree.value(all_b, np.zeros(batch, np.int64)), q_values, tree)
