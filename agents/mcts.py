"""MuZero's Monte-Carlo tree search (Schrittwieser et al. 2020, appendix B), batched over many roots.

The trees live in preallocated arrays of shape [B, num_simulations + 1, ...] (mctx's layout): node 0 is
the root, and simulation s adds node s. Each simulation does, for all B roots at once:
  1. selection: walk down from the root by pUCT until an action whose child is not expanded yet;
  2. expansion: one call of the learned model (dynamics + prediction) for all B leaves;
  3. backup: add the leaf's value to every node on the path, discounting and adding rewards on the way.
The pUCT selection and the backup walk each tree node by node in small loops compiled by numba
(`_puct_select_leaves`, `_backup`): per node they cost nanoseconds, where numpy's per-call overhead over
[B]-sized arrays cost microseconds per tree level. The model call, the expansion and Gumbel's root are
array work over the batch.

Values are from the perspective of the player to move. In two-player zero-sum games (`two_player=True`)
the players alternate, so a child's value counts negatively for its parent: the discount is -gamma.

With `gumbel=True` the search is Gumbel MuZero's (Danihelka et al. 2022): the root samples m actions without
replacement by Gumbel-top-k, shares the simulations among them by sequential halving, and returns an
improved policy softmax(logits + sigma(completed Q)) that improves on the prior even with 2-4 simulations;
interior nodes pick deterministically the action whose visit share lags that policy most.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
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


@dataclass
class SearchResult:
    visit_counts: np.ndarray  # [B, A] visits of the root's children
    policy: np.ndarray  # [B, A] visit counts normalised: the improved policy (the training target)
    root_value: np.ndarray  # [B] mean value backed up into the root
    q_values: np.ndarray  # [B, A] Q(root, a) = r + discount * V(child); 0 where unvisited
    tree: Tree
    action: np.ndarray | None = None  # [B] the Gumbel search's chosen action (None for pUCT: sample visits)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _children_q(tree: Tree, b: np.ndarray, nodes: np.ndarray, cfg: SearchConfig) -> tuple[np.ndarray, np.ndarray]:
    """(Q(s, a), N(s, a)) of the children of nodes[i] in tree b[i], [k, A]; Q is 0 where unvisited."""
    children = tree.children[b, nodes]
    expanded = children >= 0
    safe, rows = np.where(expanded, children, 0), b[:, None]
    visits = np.where(expanded, tree.visits[rows, safe], 0)
    discount = -cfg.discount if cfg.two_player else cfg.discount
    q = tree.reward[rows, safe] + discount * tree.value_sum[rows, safe] / np.maximum(visits, 1)
    return np.where(visits > 0, q, 0.0), visits


def _log_prior(tree: Tree, b: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    prior = tree.prior[b, nodes]
    return np.where(prior > 0, np.log(np.maximum(prior, 1e-300)), -np.inf)


def _sigma_completed_q(tree: Tree, b: np.ndarray, nodes: np.ndarray, cfg: SearchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel MuZero's sigma(completed Q) at nodes, [k, A], and the children's visits.

    Unvisited actions get the mixed value v_mix = (v + sum_b N(b) * sum_visited pi(b) q(b) / sum_visited pi(b))
    / (1 + sum_b N(b)), an estimate of V that uses the visits made so far; then Q is scaled to [0, 1] by
    the extremes among the node's children and multiplied by (c_visit + max_b N(b)) * c_scale.
    """
    q, visits = _children_q(tree, b, nodes, cfg)
    prior = tree.prior[b, nodes]
    visited = visits > 0
    total = visits.sum(-1)
    weight = (prior * visited).sum(-1)
    mean_q = (prior * q * visited).sum(-1) / np.where(weight > 0, weight, 1)
    v_mix = (tree.raw_value[b, nodes] + total * np.where(weight > 0, mean_q, 0.0)) / (1 + total)
    completed = np.where(visited, q, v_mix[:, None])
    lo, hi = completed.min(-1, keepdims=True), completed.max(-1, keepdims=True)
    normalized = (completed - lo) / np.maximum(hi - lo, 1e-8)
    return (cfg.c_visit + visits.max(-1, keepdims=True)) * cfg.c_scale * normalized, visits


def considered_visit_sequence(num_considered: int, num_simulations: int) -> np.ndarray:
    """Sequential halving as a schedule: before simulation s, the root visits a considered action that
    has exactly sequence[s] visits. Each phase gives every remaining action the same number of visits,
    then halves the remaining actions (mctx's get_sequence_of_considered_visits)."""
    if num_considered <= 1:
        return np.arange(num_simulations)
    log2max = int(np.ceil(np.log2(num_considered)))
    sequence: list[int] = []
    visits = [0] * num_considered
    while len(sequence) < num_simulations:
        extra = max(1, num_simulations // (log2max * num_considered))
        for _ in range(extra):
            sequence.extend(visits[:num_considered])
            visits[:num_considered] = [v + 1 for v in visits[:num_considered]]
        num_considered = max(2, num_considered // 2)
    return np.array(sequence[:num_simulations])


@numba.njit(cache=True)
def _puct_select_leaves(
    visits, value_sum, reward, prior, children, min_q, max_q, discount, pb_c_init, pb_c_base, root_mask, tie_noise,
    leaf_parent, leaf_action,
):  # fmt: skip
    """1. Selection for every tree b: from the root, take argmax_a of the pUCT score
        Q_norm(s, a) + P(s, a) * sqrt(N(s)) / (1 + N(s, a)) * (c1 + log((N(s) + c2 + 1) / c2))
    until the chosen action's child is not expanded yet; that node and action are the leaf to expand.
    Q(s, a) = r(s, a) + discount * V(child) is min-max normalised by the extremes seen in the tree so far
    (MuZero's MinMaxStats, so c1 and c2 work for any reward scale; used as it is until two distinct values
    exist); unvisited children score 0 for Q, so the prior term alone decides whether to try them.
    root_mask[b, a] False removes action a at the root."""
    batch, _, num_actions = prior.shape
    for b in range(batch):
        node = 0
        spread = max_q[b] - min_q[b]
        while True:
            parent_visits = visits[b, node]
            pb_c = (pb_c_init + np.log((parent_visits + pb_c_base + 1.0) / pb_c_base)) * np.sqrt(parent_visits)
            best_score, best_action = -np.inf, 0
            for a in range(num_actions):
                if node == 0 and not root_mask[b, a]:
                    continue
                child = children[b, node, a]
                child_visits, q_norm = 0, 0.0
                if child >= 0 and visits[b, child] > 0:
                    child_visits = visits[b, child]
                    q = reward[b, child] + discount * value_sum[b, child] / child_visits
                    q_norm = (q - min_q[b]) / spread if spread > 0 else q
                score = q_norm + pb_c / (1.0 + child_visits) * prior[b, node, a] + tie_noise[b, a]
                if score > best_score:
                    best_score, best_action = score, a
            child = children[b, node, best_action]
            if child < 0:
                leaf_parent[b], leaf_action[b] = node, best_action
                break
            node = child


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
    tree.embeddings[:, 0] = np.asarray(root_embedding)
    prior = _softmax(np.asarray(root_prior_logits, np.float64))
    if valid_actions is not None:
        prior = np.where(valid_actions, prior, 0.0)
        prior /= prior.sum(-1, keepdims=True)
    if cfg.root_exploration_fraction > 0 and not cfg.gumbel:
        noise = rng.dirichlet(np.full(num_actions, cfg.dirichlet_alpha), size=batch)
        if valid_actions is not None:
            noise = np.where(valid_actions, noise, 0.0)
            noise /= noise.sum(-1, keepdims=True)
        prior = (1 - cfg.root_exploration_fraction) * prior + cfg.root_exploration_fraction * noise
    tree.prior[:, 0] = prior
    # The root starts with one visit worth its own value estimate (as mctx does), so the first
    # selection already follows the prior instead of a tie.
    tree.visits[:, 0] = 1
    tree.value_sum[:, 0] = tree.raw_value[:, 0] = root_value
    discount = -cfg.discount if cfg.two_player else cfg.discount
    root = np.zeros(batch, np.int64)
    if cfg.gumbel:
        # Gumbel-top-k: the m actions with the largest g + logits are a sample without replacement from
        # the prior; sequential halving then decides among them by their Q.
        gumbel = cfg.gumbel_scale * rng.gumbel(size=(batch, num_actions))
        root_logits = _log_prior(tree, all_b, root)
        num_valid = np.isfinite(root_logits).sum(-1)
        m = np.minimum(cfg.max_considered_actions, num_valid)
        ranks = (-(gumbel + root_logits)).argsort(-1).argsort(-1)
        considered = ranks < m[:, None]
        schedules = {k: considered_visit_sequence(k, cfg.num_simulations) for k in np.unique(m)}
        root_score = gumbel + root_logits

    root_mask = np.ones((batch, num_actions), bool) if valid_actions is None else np.asarray(valid_actions, bool)
    leaf_parent = np.zeros(batch, np.int64)
    leaf_action = np.zeros(batch, np.int64)
    if not cfg.gumbel:
        # Noise far below any Q or prior difference only breaks exact ties (at random, not by index).
        tie_noise = rng.uniform(0, 1e-9, (cfg.num_simulations, batch, num_actions))
    for sim in range(1, cfg.num_simulations + 1):
        # 1. Selection of one leaf per tree.
        if cfg.gumbel:
            _gumbel_select_leaves(tree, cfg, sim, considered, schedules, m, root_score, leaf_parent, leaf_action)
        else:
            _puct_select_leaves(tree.visits, tree.value_sum, tree.reward, tree.prior, tree.children, tree.min_q,
                                tree.max_q, discount, cfg.pb_c_init, cfg.pb_c_base, root_mask, tie_noise[sim - 1],
                                leaf_parent, leaf_action)  # fmt: skip

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

    q_values, visit_counts = _children_q(tree, all_b, root, cfg)
    policy = visit_counts / np.maximum(visit_counts.sum(-1, keepdims=True), 1)
    action = None
    if cfg.gumbel:
        sigma, _ = _sigma_completed_q(tree, all_b, root, cfg)
        root_logits = _log_prior(tree, all_b, root)
        # The training target: the prior improved by the completed Q values (zero where masked).
        policy = _softmax(np.where(np.isfinite(root_logits), root_logits + sigma, -np.inf))
        # The action: among the considered actions that got the most visits, the best by g + logits + sigma(q).
        most = considered & (visit_counts == np.where(considered, visit_counts, -1).max(-1, keepdims=True))
        action = np.where(most, root_score + sigma, -np.inf).argmax(-1)
    return SearchResult(visit_counts, policy, tree.value(all_b, root), q_values, tree, action)


def _gumbel_select_leaves(tree: Tree, cfg: SearchConfig, sim: int, considered: np.ndarray, schedules: dict,
                          m: np.ndarray, root_score: np.ndarray, leaf_parent: np.ndarray, leaf_action: np.ndarray) -> None:  # fmt: skip
    """Gumbel's selection of one leaf per tree, all trees at once, one tree level per pass."""
    node = np.zeros(len(leaf_parent), np.int64)
    active = np.arange(len(leaf_parent))
    while active.size:
        actions = _gumbel_select(tree, active, node[active], cfg, sim, considered, schedules, m, root_score)
        child = tree.children[active, node[active], actions]
        done = child < 0
        leaf_parent[active[done]] = node[active[done]]
        leaf_action[active[done]] = actions[done]
        node[active[~done]] = child[~done]
        active = active[~done]


def _gumbel_select(tree: Tree, b: np.ndarray, nodes: np.ndarray, cfg: SearchConfig, sim: int, considered: np.ndarray,
                   schedules: dict, m: np.ndarray, root_score: np.ndarray) -> np.ndarray:  # fmt: skip
    """Gumbel MuZero's selection: at the root, the considered action with the visit count that the
    sequential-halving schedule asks for, best by g + logits + sigma(q); below it, the action whose
    share of visits lags the improved policy softmax(logits + sigma(completed Q)) the most."""
    sigma, visits = _sigma_completed_q(tree, b, nodes, cfg)
    logits = _log_prior(tree, b, nodes)
    improved = _softmax(np.where(np.isfinite(logits), logits + sigma, -np.inf))
    actions = (improved - visits / (1 + visits.sum(-1, keepdims=True))).argmax(-1)
    at_root = nodes == 0
    if at_root.any():
        rb = b[at_root]
        target = np.array([schedules[k][sim - 1] for k in m[rb]])
        wanted = considered[rb] & (visits[at_root] == target[:, None])
        actions[at_root] = np.where(wanted, root_score[rb] + sigma[at_root], -np.inf).argmax(-1)
    return actions
