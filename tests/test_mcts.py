"""MuZero's batched search: a hand-computed small tree, known best moves with exact models, masking."""

import numpy as np
import pytest
import torch

from agents.muzero.policies import run_policy
from agents.muzero.search import RootFnOutput, SearchConfig

EXACT = dict(root_exploration_fraction=0.0, discount=1.0)


def _bandit_fn(embeddings, actions):
    """Any state: action 0 pays 1, action 1 pays 0; the model prefers action 0 slightly and values 0."""
    n = len(actions)
    logits = np.tile([0.1, 0.0], (n, 1))
    return (actions == 0).double().numpy(), embeddings, logits, np.zeros(n)


def test_three_simulations_by_hand():
    cfg = SearchConfig(num_simulations=3, **EXACT)
    result = run_policy(RootFnOutput(torch.zeros(1, 1), np.array([[0.0, 0.1]]), np.array([0.0])), _bandit_fn, cfg,
                        np.random.default_rng(0))  # fmt: skip
    # Sim 1: the root (1 visit) follows the prior to action 1 (P 0.525): reward 0, value 0.
    # Sim 2: Q(1) = 0, the unvisited action 0 scores its prior term 0.475 sqrt(2) c > 0.525 sqrt(2) / 2 c:
    #        reward 1 -> Q(0) = 1, the root's value sum 0 + 0 + 1.
    # Sim 3: normalised Q(0) = 1, Q(1) = 0: action 0 again, then its child by the model's prior (action 0,
    #        reward 1): the child of action 0 gets 0 + 1 over 2 visits, Q(0) = 1 + 0.5 = 1.5.
    assert result.visit_counts.tolist() == [[2, 1]]
    np.testing.assert_allclose(result.q_values, [[1.5, 0.0]])
    np.testing.assert_allclose(result.root_value, [(0 + 0 + 1 + 2) / 4])
    np.testing.assert_allclose(result.action_weights, [[2 / 3, 1 / 3]])
    tree = result.tree
    assert (tree.min_q[0], tree.max_q[0]) == (0.0, 1.5)
    assert tree.children[0, 0].tolist() == [2, 1] and tree.children[0, 2].tolist() == [3, -1]


def test_an_unvisited_child_counts_the_parents_mean_q_with_parent_mean_q():
    """A root (3 visits) whose action 0 child has Q 1 (the tree's maximum; its own child Q 0, the minimum)
    and whose action 1 was never tried, priors 0.5 each. pUCT's constant c = 1.25 sqrt(3) (c2's log term
    is ~0). The paper's rule: the unvisited child's Q counts 0, the tree's minimum, so action 0 wins
    1 + c 0.5 / 3 = 1.36 against 0 + c 0.5 = 1.08 and the search descends it again. EfficientZero's rule:
    the unvisited child counts the root's mean Q over its visited children, 1 (normalised 1), and wins
    1 + 1.08 = 2.08: its first visit is the leaf."""
    from agents.muzero.policies import _puct_select_leaves
    from agents.muzero.search import Tree

    tree = Tree.allocate(1, 4, 2, torch.zeros(1, 1))
    tree.prior[0, :] = 0.5
    tree.visits[0, :3] = [3, 2, 1]
    tree.value_sum[0, :3] = [1.0, 2.0, 0.0]  # V(root) 1/3, V(child 1) = 1, V(grandchild 2) = 0
    tree.children[0, 0, 0], tree.children[0, 1, 0] = 1, 2
    tree.parent[0, 1:3] = [0, 1]
    tree.min_q[0], tree.max_q[0] = 0.0, 1.0
    for parent_mean_q, leaf in ((False, (1, 1)), (True, (0, 1))):
        leaf_parent, leaf_action = np.zeros(1, np.int64), np.zeros(1, np.int64)
        _puct_select_leaves(tree.visits, tree.value_sum, tree.reward, tree.prior, tree.children, tree.min_q, tree.max_q,
                            1.0, 1.25, 19652.0, parent_mean_q, np.ones((1, 2), bool), np.zeros((1, 2)), leaf_parent,
                            leaf_action)  # fmt: skip
        assert (leaf_parent[0], leaf_action[0]) == leaf, parent_mean_q


def _jackpot_fn(embeddings, actions):
    """Single-player game: action 2 pays 1 and ends the game (absorbing state 1); others pay 0."""
    ended = embeddings[:, 0] > 0
    win = (actions == 2) & ~ended
    next_embeddings = (ended | win).double().unsqueeze(-1)
    n = len(actions)
    return win.double().numpy(), next_embeddings, np.zeros((n, 4)), np.zeros(n)


def test_search_finds_the_winning_move_for_every_root_in_the_batch():
    cfg = SearchConfig(num_simulations=16, discount=0.99)
    result = run_policy(RootFnOutput(torch.zeros(8, 1), np.zeros((8, 4)), np.zeros(8)), _jackpot_fn, cfg, np.random.default_rng(1))
    assert (result.visit_counts.argmax(-1) == 2).all()
    assert result.visit_counts.sum(-1).tolist() == [16] * 8


LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


def _tictactoe_fn(embeddings, actions):
    """An exact TicTacToe model. Embedding: 9 cells from the mover's view (+1 mine, -1 theirs) and a
    game-over flag. Rewards go to the player who moved; an occupied cell loses at once."""
    n = len(actions)
    rewards, out = np.zeros(n), embeddings.clone()
    for i in range(n):
        board, over, a = embeddings[i, :9].clone(), embeddings[i, 9] > 0, int(actions[i])
        if over:
            continue
        if board[a] != 0:
            rewards[i], out[i, 9] = -1.0, 1.0
            continue
        board[a] = 1.0
        if any(all(board[c] == 1 for c in line) for line in LINES):
            rewards[i], out[i, 9] = 1.0, 1.0
        elif (board != 0).all():
            out[i, 9] = 1.0
        out[i, :9] = -board  # the other player's view
    return rewards, out, np.zeros((n, 9)), np.zeros(n)


def _root(cells: str):
    """'XX.OO....' with X to move -> the root embedding and its legal moves."""
    board = torch.tensor([{"X": 1.0, "O": -1.0, ".": 0.0}[c] for c in cells] + [0.0]).unsqueeze(0)
    return board.double(), (board[:, :9] == 0).numpy()


@pytest.mark.parametrize("cells, best", [("XX.OO....", 2), ("OO..X..X.", 2)], ids=["win in one", "block in one"])
def test_search_finds_the_best_tictactoe_move(cells, best):
    embedding, legal = _root(cells)
    cfg = SearchConfig(num_simulations=400, discount=1.0, two_player=True, root_exploration_fraction=0.0)
    result = run_policy(RootFnOutput(embedding, np.zeros((1, 9)), np.zeros(1)), _tictactoe_fn, cfg, np.random.default_rng(0), legal)
    assert result.visit_counts[0].argmax() == best, result.visit_counts


def test_invalid_actions_get_no_visits_even_with_root_noise():
    legal = np.array([[True, False, True, False]] * 4)
    cfg = SearchConfig(num_simulations=30, root_exploration_fraction=0.5, dirichlet_alpha=0.3)
    result = run_policy(RootFnOutput(torch.zeros(4, 1), np.array([[0.0, 5.0, 0.0, 5.0]] * 4), np.zeros(4)), _jackpot_fn, cfg,
                        np.random.default_rng(2), legal)  # fmt: skip
    assert (result.visit_counts[:, [1, 3]] == 0).all() and (result.visit_counts.sum(-1) == 30).all()
    assert (result.tree.prior[:, 0, [1, 3]] == 0).all()


ARMS = np.array([0.0, 0.2, 1.0, 0.5])


def _arms_fn(embeddings, actions):
    """A 4-armed bandit: the arm's payout, then nothing more (value 0)."""
    n = len(actions)
    return ARMS[actions.numpy()], embeddings, np.zeros((n, 4)), np.zeros(n)


def test_sequential_halving_schedule_by_hand():
    from agents.muzero.policies import considered_visit_sequence

    # m = 4, 8 simulations: every action once, then the best 2 twice more each.
    assert considered_visit_sequence(4, 8).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert considered_visit_sequence(1, 3).tolist() == [0, 1, 2]


def test_gumbel_with_four_simulations_finds_the_best_arm():
    cfg = SearchConfig(num_simulations=4, gumbel=True, discount=1.0)
    result = run_policy(RootFnOutput(torch.zeros(3, 1), np.zeros((3, 4)), np.zeros(3)), _arms_fn, cfg, np.random.default_rng(0))
    assert (result.visit_counts == 1).all()  # each of the 4 considered arms once
    assert (result.action_weights.argmax(-1) == 2).all()
    np.testing.assert_allclose(result.action_weights.sum(-1), 1.0)
    # The action is a sample of the improved policy (through the Gumbel noise); without noise it is its argmax.
    greedy = run_policy(RootFnOutput(torch.zeros(3, 1), np.zeros((3, 4)), np.zeros(3)), _arms_fn,
                        SearchConfig(num_simulations=4, gumbel=True, gumbel_scale=0.0), np.random.default_rng(0))  # fmt: skip
    assert (greedy.action == 2).all()


@pytest.mark.parametrize("simulations", [2, 3])
def test_gumbel_with_few_simulations_improves_on_the_prior(simulations):
    cfg = SearchConfig(num_simulations=simulations, gumbel=True, discount=1.0)
    rng = np.random.default_rng(0)
    result = run_policy(RootFnOutput(torch.zeros(256, 1), np.zeros((256, 4)), np.zeros(256)), _arms_fn, cfg, rng)
    # The prior (uniform) earns 0.425 on average; the improved policy must do better in expectation,
    # although each root saw only `simulations` of the 4 arms.
    assert (result.action_weights @ ARMS).mean() > 0.425 + 0.1
    assert (ARMS[result.action]).mean() > 0.425 + 0.1


def test_gumbels_sigma_scales_q_by_the_childrens_or_the_trees_extremes():
    """A root whose two children were visited once each, Q 10 and 10.5 (rewards 0, discount 1), in a tree
    whose Q values span 0..20. sigma = (c_visit + max N) * c_scale * normalised Q = (50 + 1) * 0.1 * q.
    By the children's extremes (mctx) q is 0 and 1 however close the two are: sigma 0 and 5.1, a target
    of softmax(0, 5.1) = 0.994 on the better action. By the tree's, q is 10/20 and 10.5/20: sigma 2.55
    and 2.6775, a target of 0.532: the 0.5 gap is small against what the tree has seen."""
    from agents.muzero.policies import _root_sigma
    from agents.muzero.search import Tree

    tree = Tree.allocate(1, 3, 2, torch.zeros(1, 1))
    tree.prior[0, 0] = 0.5
    tree.visits[0] = [3, 1, 1]
    tree.value_sum[0] = [20.5, 10.0, 10.5]
    tree.children[0, 0] = [1, 2]
    tree.parent[0, 1:] = 0
    tree.min_q[0], tree.max_q[0] = 0.0, 20.0
    args = (tree.visits, tree.value_sum, tree.reward, tree.prior, tree.children, tree.raw_value, tree.min_q, tree.max_q)
    children = _root_sigma(*args, False, 1.0, 50.0, 0.1)
    whole_tree = _root_sigma(*args, True, 1.0, 50.0, 0.1)
    np.testing.assert_allclose(children, [[0.0, 5.1]])
    np.testing.assert_allclose(whole_tree, [[2.55, 2.6775]])


def test_gumbel_never_considers_invalid_actions():
    legal = np.array([[True, False, True, True]] * 8)
    cfg = SearchConfig(num_simulations=12, gumbel=True, max_considered_actions=2)
    result = run_policy(RootFnOutput(torch.zeros(8, 1), np.zeros((8, 4)), np.zeros(8)), _arms_fn, cfg, np.random.default_rng(3), legal)
    assert (result.visit_counts[:, 1] == 0).all() and (result.action_weights[:, 1] == 0).all()
    assert ((result.visit_counts > 0).sum(-1) == 2).all()  # m = 2 considered actions
    assert legal[0, result.action].all()


def _side_fn(embeddings, actions):
    """A one-dimensional game whose mirror is x -> -x with the two actions swapped: action 1 moves x by +1
    and pays 1 where x < 0, action 0 moves it by -1 and pays 1 where x > 0. Prior logits (x, -x), value 0:
    an equivariant model."""
    x, a = embeddings[:, 0].numpy(), actions.numpy()
    rewards = np.where(a == 1, x < 0, x > 0).astype(np.float64)
    moved = embeddings + torch.as_tensor(np.where(a == 1, 1.0, -1.0)).unsqueeze(-1)
    return rewards, moved, np.stack([moved[:, 0].numpy(), -moved[:, 0].numpy()], 1), np.zeros(len(a))


def _side_root(observations):
    x = np.asarray(observations, np.float64)[:, 0]
    return RootFnOutput(torch.as_tensor(x).unsqueeze(-1), np.stack([x, -x], 1), np.zeros(len(x)))


@pytest.mark.parametrize("gumbel", [False, True], ids=["puct", "gumbel"])
def test_an_equivariant_models_search_is_the_same_averaged_over_its_mirror(gumbel):
    """Mirror-averaging adds nothing to a model that is already equivariant: the same weights, values and
    actions as one search, and twice the visits (each copy's mapped back to the position's actions)."""
    from agents.muzero.policies import run_policy_over_symmetries
    from envs.symmetries import Symmetries

    mirror = Symmetries(np.array([[0], [0]]), np.array([[1.0], [-1.0]], np.float32), np.array([[0, 1], [1, 0]]))
    cfg = SearchConfig(num_simulations=8, discount=0.9, gumbel=gumbel, gumbel_scale=0.0, root_exploration_fraction=0.0)
    obs = np.array([[-2.5], [-0.7], [0.3], [1.9]], np.float32)
    alone = run_policy(_side_root(obs), _side_fn, cfg, np.random.default_rng(0), greedy=True)
    both = run_policy_over_symmetries(_side_root, _side_fn, cfg, np.random.default_rng(0), obs, mirror, greedy=True)
    np.testing.assert_allclose(both.action_weights, alone.action_weights, atol=1e-6)
    np.testing.assert_allclose(both.root_value, alone.root_value, atol=1e-9)
    np.testing.assert_array_equal(both.visit_counts, 2 * alone.visit_counts)
    assert both.action.tolist() == alone.action.tolist() == [1, 1, 0, 0]  # towards 0, where the reward is


def test_mirror_averaging_cancels_a_models_bias_for_one_side():
    """A model that prefers action 0 whatever it sees (prior 0.73) and expects nothing from either action:
    one search always plays 0; averaged over the mirror the two actions weigh 0.5 each, and the greedy
    choice between the exact tie is drawn at random instead of always the first."""
    from agents.muzero.policies import run_policy_over_symmetries
    from envs.symmetries import Symmetries

    def biased_fn(embeddings, actions):
        n = len(actions)
        return np.zeros(n), embeddings, np.tile([1.0, 0.0], (n, 1)), np.zeros(n)

    def biased_root(observations):
        n = len(observations)
        return RootFnOutput(torch.as_tensor(observations, dtype=torch.float64), np.tile([1.0, 0.0], (n, 1)), np.zeros(n))

    mirror = Symmetries(np.array([[0], [0]]), np.array([[1.0], [-1.0]], np.float32), np.array([[0, 1], [1, 0]]))
    cfg = SearchConfig(num_simulations=16, gumbel=True, gumbel_scale=0.0)
    obs = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    alone = run_policy(biased_root(obs), biased_fn, cfg, np.random.default_rng(0))
    assert (alone.action == 0).all() and (alone.action_weights[:, 0] > 0.7).all()
    both = run_policy_over_symmetries(biased_root, biased_fn, cfg, np.random.default_rng(0), obs, mirror)
    np.testing.assert_allclose(both.action_weights, 0.5)
    np.testing.assert_allclose(both.prior, 0.5)
    assert 16 < (both.action == 0).sum() < 48


def test_tictactoes_eight_searches_map_back_to_the_winning_cell():
    """The win-in-one position searched through all 8 rotations and reflections (its legal moves turned
    with it): mapped back, the visits go to cell 2, never to an occupied cell. A map that sent a rotated
    copy's move back through the rotation instead of its inverse would scatter them (90 degrees is not
    its own inverse)."""
    from agents.muzero.policies import run_policy_over_symmetries
    from envs.symmetries import env_symmetries

    board = np.array([[1.0, 1.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]], np.float32)

    def root_fn(observations):
        n = len(observations)
        embedding = torch.cat([torch.as_tensor(observations, dtype=torch.float64), torch.zeros(n, 1, dtype=torch.float64)], 1)
        return RootFnOutput(embedding, np.zeros((n, 9)), np.zeros(n))

    cfg = SearchConfig(num_simulations=200, discount=1.0, two_player=True, root_exploration_fraction=0.0)
    result = run_policy_over_symmetries(root_fn, _tictactoe_fn, cfg, np.random.default_rng(0), board,
                                        env_symmetries("rlgames/TicTacToe-v0"), board == 0, greedy=True)  # fmt: skip
    assert result.visit_counts.sum() == 8 * 200 and (result.visit_counts[0, board[0] != 0] == 0).all()
    assert result.action.tolist() == [2] and result.visit_counts[0, 2] > 0.5 * 8 * 200
