"""The search's two policies (mctx's policies.py): each prepares the roots, selects leaves its own way
inside the generic loop (agents.muzero.search), and returns the action to play, the action weights to
learn from and the tree.

- `muzero_policy`: MuZero's pUCT (Schrittwieser et al. 2020): Dirichlet noise in the root prior, pUCT
  at every node; the weights are the root's visit shares, the action is sampled from visits^(1/T) (or
  the most visited, when greedy).
- `gumbel_muzero_policy`: Gumbel MuZero (Danihelka et al. 2022): the root samples m actions without
  replacement by Gumbel-top-k and shares the simulations among them by sequential halving; interior
  nodes pick deterministically the action whose visit share lags the improved policy most. The weights
  are that improved policy softmax(logits + sigma(completed Q)), which improves on the prior even with
  2-4 simulations, and the action is the one sequential halving leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numba
import numpy as np

from agents.muzero.search import (
    RecurrentFn,
    RootFnOutput,
    SearchConfig,
    Tree,
    children_q,
    init_tree,
    search,
    signed_discount,
)

if TYPE_CHECKING:
    from envs.symmetries import Symmetries


class PolicyOutput(NamedTuple):
    action: np.ndarray  # [B] the action to play
    action_weights: np.ndarray  # [B, A] the improved policy: the training target
    visit_counts: np.ndarray  # [B, A] visits of the root's children
    root_value: np.ndarray  # [B] mean value backed up into the root
    q_values: np.ndarray  # [B, A] Q(root, a) = r + discount * V(child); 0 where unvisited
    tree: Tree
    prior: np.ndarray  # [B, A] the model's prior at the root (before any noise), renormalised over legal actions


def run_policy(
    root: RootFnOutput, recurrent_fn: RecurrentFn, cfg: SearchConfig, rng: np.random.Generator,
    valid_actions: np.ndarray | None = None, temperature: float = 1.0, greedy: bool | np.ndarray = False,
) -> PolicyOutput:  # fmt: skip
    """The policy cfg names (Gumbel or pUCT). temperature and greedy choose pUCT's action (see
    muzero_policy); the Gumbel search always plays its own choice."""
    if cfg.gumbel:
        return gumbel_muzero_policy(root, recurrent_fn, cfg, rng, valid_actions)
    return muzero_policy(root, recurrent_fn, cfg, rng, valid_actions, temperature, greedy)


def root_prior(root: RootFnOutput, valid_actions: np.ndarray | None) -> np.ndarray:
    """[B, A] the softmax of the root's logits, renormalised over valid_actions [B, A] (bool)."""
    prior = _softmax(np.asarray(root.prior_logits, np.float64))
    if valid_actions is not None:
        prior = np.where(valid_actions, prior, 0.0)
        prior /= prior.sum(-1, keepdims=True)
    return prior


def muzero_policy(
    root: RootFnOutput, recurrent_fn: RecurrentFn, cfg: SearchConfig, rng: np.random.Generator,
    valid_actions: np.ndarray | None = None, temperature: float = 1.0, greedy: bool | np.ndarray = False,
) -> PolicyOutput:  # fmt: skip
    """MuZero's search from B roots. valid_actions [B, A] (bool) removes actions at the root: they get
    no prior, no noise and no visits. The action of root b is the most visited where greedy (True, or
    greedy[b]); else sampled from visits^(1 / temperature). greedy=True draws no random numbers."""
    prior = model_prior = root_prior(root, valid_actions)
    batch, num_actions = prior.shape
    if cfg.root_exploration_fraction > 0:
        noise = rng.dirichlet(np.full(num_actions, cfg.dirichlet_alpha), size=batch)
        if valid_actions is not None:
            noise = np.where(valid_actions, noise, 0.0)
            noise /= noise.sum(-1, keepdims=True)
        prior = (1 - cfg.root_exploration_fraction) * prior + cfg.root_exploration_fraction * noise
    tree = init_tree(root, prior, cfg.num_simulations)
    root_mask = np.ones((batch, num_actions), bool) if valid_actions is None else np.asarray(valid_actions, bool)
    # Noise far below any Q or prior difference only breaks exact ties (at random, not by index).
    tie_noise = rng.uniform(0, 1e-9, (cfg.num_simulations, batch, num_actions))
    discount = signed_discount(cfg)

    def select_leaves(tree: Tree, sim: int, leaf_parent: np.ndarray, leaf_action: np.ndarray) -> None:
        _puct_select_leaves(tree.visits, tree.value_sum, tree.reward, tree.prior, tree.children, tree.min_q,
                            tree.max_q, discount, cfg.pb_c_init, cfg.pb_c_base, cfg.parent_mean_q, root_mask,
                            tie_noise[sim - 1], leaf_parent, leaf_action)  # fmt: skip

    search(tree, recurrent_fn, select_leaves, cfg)
    all_b, root_nodes = np.arange(batch), np.zeros(batch, np.int64)
    q_values, visit_counts = children_q(tree, all_b, root_nodes, cfg)
    weights = visit_counts / np.maximum(visit_counts.sum(-1, keepdims=True), 1)
    action = _action_from_visits(visit_counts, visit_counts.argmax(-1), temperature, greedy, rng)
    return PolicyOutput(action, weights, visit_counts, tree.value(all_b, root_nodes), q_values, tree, model_prior)


def gumbel_muzero_policy(
    root: RootFnOutput, recurrent_fn: RecurrentFn, cfg: SearchConfig, rng: np.random.Generator,
    valid_actions: np.ndarray | None = None,
) -> PolicyOutput:  # fmt: skip
    """Gumbel MuZero's search from B roots (valid_actions as in muzero_policy); cfg.gumbel_scale 0 makes
    it deterministic (for evaluation)."""
    prior = root_prior(root, valid_actions)
    batch, num_actions = prior.shape
    tree = init_tree(root, prior, cfg.num_simulations)
    all_b, root_nodes = np.arange(batch), np.zeros(batch, np.int64)
    # Gumbel-top-k: the m actions with the largest g + logits are a sample without replacement from the
    # prior; sequential halving then decides among them by their Q.
    gumbel = cfg.gumbel_scale * rng.gumbel(size=(batch, num_actions))
    root_logits = _log_prior(tree, all_b, root_nodes)
    num_valid = np.isfinite(root_logits).sum(-1)
    m = np.minimum(cfg.max_considered_actions, num_valid)
    ranks = (-(gumbel + root_logits)).argsort(-1).argsort(-1)
    considered = ranks < m[:, None]
    schedules = {k: considered_visit_sequence(k, cfg.num_simulations) for k in np.unique(m)}
    root_score = gumbel + root_logits

    discount = signed_discount(cfg)
    tree_range = cfg.gumbel_q_range == "tree"

    def select_leaves(tree: Tree, sim: int, leaf_parent: np.ndarray, leaf_action: np.ndarray) -> None:
        target = np.array([schedules[k][sim - 1] for k in m])  # the root visit count halving asks for
        _gumbel_select_leaves(tree.visits, tree.value_sum, tree.reward, tree.prior, tree.children, tree.raw_value,
                              tree.min_q, tree.max_q, tree_range, discount, cfg.c_visit, cfg.c_scale, considered, target,
                              root_score, leaf_parent, leaf_action)  # fmt: skip

    search(tree, recurrent_fn, select_leaves, cfg)
    q_values, visit_counts = children_q(tree, all_b, root_nodes, cfg)
    sigma = _root_sigma(tree.visits, tree.value_sum, tree.reward, tree.prior, tree.children, tree.raw_value, tree.min_q,
                        tree.max_q, tree_range, discount, cfg.c_visit, cfg.c_scale)  # fmt: skip
    # The training target: the prior improved by the completed Q values (zero where masked).
    weights = _softmax(np.where(np.isfinite(root_logits), root_logits + sigma, -np.inf))
    # The action: among the considered actions that got the most visits, the best by g + logits + sigma(q).
    most = considered & (visit_counts == np.where(considered, visit_counts, -1).max(-1, keepdims=True))
    action = np.where(most, root_score + sigma, -np.inf).argmax(-1)
    return PolicyOutput(action, weights, visit_counts, tree.value(all_b, root_nodes), q_values, tree, prior)


def run_policy_over_symmetries(
    root_fn: Callable[[np.ndarray], RootFnOutput], recurrent_fn: RecurrentFn, cfg: SearchConfig,
    rng: np.random.Generator, observations: np.ndarray, symmetries: Symmetries | None = None,
    valid_actions: np.ndarray | None = None, temperature: float = 1.0, greedy: bool | np.ndarray = False,
) -> PolicyOutput:  # fmt: skip
    """run_policy from the roots root_fn(observations) [B, ...]; with the game's symmetries
    (envs.symmetries), from every symmetric copy of every observation as well, S x B roots in one batched
    search, whose S results per observation are mapped back to its own actions and combined: the action
    weights, Q values and priors averaged, the visits summed, the root values averaged.

    A learned model is equivariant only as far as its training made it: a CartPole model trained on
    mirrored unrolls still pushed its greedy games to the same end of the track (19 of 20 episodes,
    mean 266, where the same checkpoint's mirror-averaged search balanced 14 of 20 to the time limit,
    mean 453). Averaged over the mirror, whatever bias the model has for one side cancels.

    The action comes from the combined result: pUCT's as in muzero_policy (the most visited where greedy,
    else sampled from visits^(1 / temperature)); Gumbel's is the best of the averaged improved policy with
    gumbel_scale 0 (evaluation) and a sample from it otherwise (what the single search's Gumbel-max
    choice is, in distribution). Exact ties, as at a symmetric position, are broken at random."""
    if symmetries is None:
        return run_policy(root_fn(observations), recurrent_fn, cfg, rng, valid_actions, temperature, greedy)
    copies, batch = len(symmetries), len(observations)
    masks = None if valid_actions is None else symmetries.action_mask_copies(np.asarray(valid_actions, bool))
    # greedy: each copy's own action is never played, so none is drawn.
    result = run_policy(root_fn(symmetries.observation_copies(observations)), recurrent_fn, cfg, rng, masks,
                        greedy=True)  # fmt: skip
    # Copy g's action c is the observation's action action_perms[g][c]: gathering copy g's entries at
    # argsort(action_perms[g]) puts them in the observation's order.
    inverse = np.argsort(symmetries.action_perms, axis=1)[:, None, :]  # [S, 1, A]

    def mapped_back(x: np.ndarray) -> np.ndarray:  # [S * B, A] -> [S, B, A]
        return np.take_along_axis(x.reshape(copies, batch, -1), inverse, 2)

    weights, visit_counts = mapped_back(result.action_weights).mean(0), mapped_back(result.visit_counts).sum(0)
    tie_noise = rng.uniform(0, 1e-12, weights.shape)
    if cfg.gumbel:
        best = (weights + tie_noise).argmax(-1)
        action = best if cfg.gumbel_scale == 0 else _sample_rows(weights, rng)
    else:
        action = _action_from_visits(visit_counts, (visit_counts + tie_noise).argmax(-1), temperature, greedy, rng)
    return PolicyOutput(action, weights, visit_counts, result.root_value.reshape(copies, batch).mean(0),
                        mapped_back(result.q_values).mean(0), result.tree, mapped_back(result.prior).mean(0))  # fmt: skip


def _action_from_visits(visit_counts: np.ndarray, most_visited: np.ndarray, temperature: float,
                        greedy: bool | np.ndarray, rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """pUCT's move [B]: most_visited where greedy (True, or greedy[b]), else sampled from
    visit_counts^(1 / temperature). greedy=True draws no random numbers."""
    if greedy is True:
        return most_visited
    action = _sample_rows(visit_counts.astype(np.float64) ** (1.0 / temperature), rng)
    return action if greedy is False else np.where(greedy, most_visited, action)


def _sample_rows(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[B] one action per row of weights [B, A] (>= 0, not normalised), drawn in proportion to them.
    Inverse-CDF sampling of every row at once: the same uniform draws and the same actions as
    rng.choice(A, p=row) row by row, without its per-call cost (~10 us a root)."""
    cdf = (weights / weights.sum(-1, keepdims=True)).cumsum(-1)
    cdf /= cdf[:, -1:]
    return (cdf <= rng.random(len(weights))[:, None]).sum(-1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _log_prior(tree: Tree, b: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    prior = tree.prior[b, nodes]
    return np.where(prior > 0, np.log(np.maximum(prior, 1e-300)), -np.inf)


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
    visits, value_sum, reward, prior, children, min_q, max_q, discount, pb_c_init, pb_c_base, parent_mean_q,
    root_mask, tie_noise, leaf_parent, leaf_action,
):  # fmt: skip
    """1. Selection for every tree b: from the root, take argmax_a of the pUCT score
        Q_norm(s, a) + P(s, a) * sqrt(N(s)) / (1 + N(s, a)) * (c1 + log((N(s) + c2 + 1) / c2))
    until the chosen action's child is not expanded yet; that node and action are the leaf to expand.
    Q(s, a) = r(s, a) + discount * V(child) is min-max normalised by the extremes seen in the tree so far
    (MuZero's MinMaxStats, so c1 and c2 work for any reward scale; used as it is until two distinct values
    exist); unvisited children score 0 for Q (the tree's minimum), so the prior term alone decides whether
    to try them, or, with parent_mean_q, the parent's mean Q (EfficientZero, LightZero): with two actions
    and a visited child at the tree's top, a 0 would leave its sibling unvisited for the whole search
    however close their values (no information yet is not a reason to rank it last).
    root_mask[b, a] False removes action a at the root."""
    batch, _, num_actions = prior.shape
    for b in range(batch):
        node = 0
        spread = max_q[b] - min_q[b]
        while True:
            parent_visits = visits[b, node]
            pb_c = (pb_c_init + np.log((parent_visits + pb_c_base + 1.0) / pb_c_base)) * np.sqrt(parent_visits)
            unvisited_q = 0.0
            if parent_mean_q and spread > 0:
                # The mean of the node's own value and its visited children's Q (at the root, of those
                # children alone once there are some), normalised like them (EfficientZero's rule).
                total, count = 0.0, 0
                for a in range(num_actions):
                    child = children[b, node, a]
                    if child >= 0 and visits[b, child] > 0:
                        total += reward[b, child] + discount * value_sum[b, child] / visits[b, child]
                        count += 1
                if node > 0 or count == 0:
                    total += value_sum[b, node] / parent_visits
                    count += 1
                unvisited_q = min(max((total / count - min_q[b]) / spread, 0.0), 1.0)
            best_score, best_action = -np.inf, 0
            for a in range(num_actions):
                if node == 0 and not root_mask[b, a]:
                    continue
                child = children[b, node, a]
                child_visits, q_norm = 0, unvisited_q
                if child >= 0 and visits[b, child] > 0:
                    child_visits = visits[b, child]
                    q = reward[b, child] + discount * value_sum[b, child] / child_visits
                    q_norm = (q - min_q[b]) / spread if spread > 0 else (0.0 if parent_mean_q else q)
                score = q_norm + pb_c / (1.0 + child_visits) * prior[b, node, a] + tie_noise[b, a]
                if score > best_score:
                    best_score, best_action = score, a
            child = children[b, node, best_action]
            if child < 0:
                leaf_parent[b], leaf_action[b] = node, best_action
                break
            node = child


@numba.njit(cache=True)
def _completed_q_sigma(visits, value_sum, reward, prior, children, raw_value, min_q, max_q, tree_range, discount,
                       c_visit, c_scale, b, node, n, sigma):  # fmt: skip
    """Gumbel MuZero's sigma(completed Q) at node `node` of tree b, written into sigma [A], with the
    children's visits into n [A]; returns their sum.

    Unvisited actions get the mixed value v_mix = (v + sum_b N(b) * sum_visited pi(b) q(b) / sum_visited pi(b))
    / (1 + sum_b N(b)), an estimate of V that uses the visits made so far; then Q is scaled to [0, 1] by
    the extremes among the node's children (mctx's rule), or with tree_range by those of every Q in tree b
    (MuZero's min-max, min_q/max_q [B]) and the children's, and multiplied by (c_visit + max_b N(b)) * c_scale.
    Why the tree's: among two children the children's extremes are always the pair itself, so the better
    of two actions gets sigma (c_visit + N) * c_scale more than the other (5.8 logits at 16 simulations)
    however small the gap, and the target follows the sign of the value's noise."""
    num_actions = sigma.shape[0]
    total, weight, weighted_q, most = 0.0, 0.0, 0.0, 0.0
    for a in range(num_actions):
        child = children[b, node, a]
        n[a] = visits[b, child] if child >= 0 else 0
        sigma[a] = reward[b, child] + discount * value_sum[b, child] / n[a] if n[a] > 0 else 0.0  # Q(s, a) so far
        total += n[a]
        most = max(most, n[a])
        if n[a] > 0:
            weight += prior[b, node, a]
            weighted_q += prior[b, node, a] * sigma[a]
    mean_q = weighted_q / weight if weight > 0 else 0.0
    v_mix = (raw_value[b, node] + total * mean_q) / (1 + total)
    lo, hi = (min_q[b], max_q[b]) if tree_range else (np.inf, -np.inf)
    for a in range(num_actions):
        if n[a] == 0:
            sigma[a] = v_mix
        lo, hi = min(lo, sigma[a]), max(hi, sigma[a])
    for a in range(num_actions):
        sigma[a] = (c_visit + most) * c_scale * (sigma[a] - lo) / max(hi - lo, 1e-8)
    return total


@numba.njit(cache=True)
def _root_sigma(visits, value_sum, reward, prior, children, raw_value, min_q, max_q, tree_range, discount, c_visit,
                c_scale):  # fmt: skip
    """[B, A] sigma(completed Q) at every tree's root (_completed_q_sigma)."""
    batch, _, num_actions = prior.shape
    out = np.zeros((batch, num_actions))
    n = np.zeros(num_actions)
    for b in range(batch):
        _completed_q_sigma(visits, value_sum, reward, prior, children, raw_value, min_q, max_q, tree_range, discount,
                           c_visit, c_scale, b, 0, n, out[b])  # fmt: skip
    return out


@numba.njit(cache=True)
def _gumbel_select_leaves(visits, value_sum, reward, prior, children, raw_value, min_q, max_q, tree_range, discount,
                          c_visit, c_scale, considered, target_visits, root_score, leaf_parent, leaf_action):  # fmt: skip
    """Gumbel MuZero's selection of one leaf per tree b: at the root, the considered action with the visit
    count that the sequential-halving schedule asks for (target_visits[b]), best by g + logits +
    sigma(q); below it, the action whose share of visits lags the improved policy softmax(logits +
    sigma(completed Q)) the most, until an action whose child is not expanded yet. Compiled, as pUCT's
    selection: numpy's per-call overhead on [B, A] arrays cost more than the arithmetic."""
    batch, _, num_actions = prior.shape
    n = np.zeros(num_actions)
    sigma = np.zeros(num_actions)
    logits = np.zeros(num_actions)
    for b in range(batch):
        node = 0
        while True:
            total = _completed_q_sigma(visits, value_sum, reward, prior, children, raw_value, min_q, max_q, tree_range,
                                       discount, c_visit, c_scale, b, node, n, sigma)  # fmt: skip
            best, best_action = -np.inf, 0
            if node == 0:
                for a in range(num_actions):
                    if considered[b, a] and n[a] == target_visits[b] and root_score[b, a] + sigma[a] > best:
                        best, best_action = root_score[b, a] + sigma[a], a
            else:
                # improved = softmax(log prior + sigma) over the actions with a prior
                top = -np.inf
                for a in range(num_actions):
                    logits[a] = np.log(prior[b, node, a]) + sigma[a] if prior[b, node, a] > 0 else -np.inf
                    top = max(top, logits[a])
                norm = 0.0
                for a in range(num_actions):
                    norm += np.exp(logits[a] - top) if prior[b, node, a] > 0 else 0.0
                for a in range(num_actions):
                    improved = np.exp(logits[a] - top) / norm if prior[b, node, a] > 0 else 0.0
                    score = improved - n[a] / (1 + total)
                    if score > best:
                        best, best_action = score, a
            child = children[b, node, best_action]
            if child < 0:
                leaf_parent[b], leaf_action[b] = node, best_action
                break
            node = child
