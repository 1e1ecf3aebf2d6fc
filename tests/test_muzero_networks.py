"""MuZero's networks: shapes, scaled hidden states, a neutral start, and use as the search's model."""

import numpy as np
import pytest
import torch

from agents.board_encoding import board_planes, move_planes
from agents.muzero.networks import (
    MuZeroMLP,
    MuZeroResNet,
    root_inference,
    scale_hidden_state,
    search_callback,
)
from agents.muzero.policies import run_policy
from agents.muzero.search import RootFnOutput, SearchConfig
from agents.muzero.value_transform import support_to_scalar


def test_hidden_states_are_scaled_to_the_unit_interval_per_sample():
    s = scale_hidden_state(torch.tensor([[1.0, 3.0, 2.0], [-5.0, -5.0, 5.0]]))
    torch.testing.assert_close(s, torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]))


def test_inference_shapes_and_a_neutral_start():
    torch.manual_seed(0)
    model = MuZeroMLP(obs_dim=4, num_actions=2, hidden_state=16, support_size=10, reward_support_size=5)
    state, policy, value = model.initial_inference(torch.randn(7, 4))
    assert state.shape == (7, 16) and policy.shape == (7, 2) and value.shape == (7, 21)
    assert state.min() >= 0.0 and state.max() <= 1.0
    next_state, reward, policy2, value2 = model.recurrent_inference(state, torch.tensor([0, 1, 0, 1, 0, 1, 1]))
    assert next_state.shape == (7, 16) and reward.shape == (7, 11)
    # Zero-initialised heads: uniform policy, value and reward 0, until training moves them.
    assert torch.equal(policy, torch.zeros(7, 2)) and torch.equal(reward, torch.zeros(7, 11))
    loss = value2.sum() + reward.sum() + policy2.sum()
    loss.backward()  # every function is differentiable through the unroll
    assert model.representation[0].weight.grad is not None


def test_the_model_drives_a_batched_search():
    model = MuZeroMLP(obs_dim=4, num_actions=2)
    state, logits, value = root_inference(model, np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32))
    result = run_policy(RootFnOutput(state, logits, value), search_callback(model), SearchConfig(num_simulations=10),
                        np.random.default_rng(0))  # fmt: skip
    assert result.visit_counts.shape == (16, 2) and (result.visit_counts.sum(-1) == 10).all()
    assert result.tree.embeddings.shape == (16, 11, 64)


@pytest.mark.parametrize("hidden, reward_support, width", [((64,), 20, 1.0), ((32, 48), 20, 1.0), ((32,), 5, 1.0),
                                                           ((64,), 20, 0.05)])
def test_the_search_callback_equals_recurrent_inference(hidden, reward_support, width):
    # The fused callback (action rows instead of one-hot, the three heads batched) computes the same
    # function as the modules (up to float32 rounding, which the sharp random heads amplify); random
    # non-zero weights so that every head matters.
    torch.manual_seed(0)
    model = MuZeroMLP(4, 3, 16, hidden, support_size=20, reward_support_size=reward_support, support_bin_width=width)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    state, action = torch.rand(7, 16), torch.tensor([0, 1, 2, 0, 1, 2, 2])
    reward, next_state, logits, value = search_callback(model)(state, action)
    with torch.no_grad():
        expected_state, reward_logits, policy_logits, value_logits = model.recurrent_inference(state, action)
    torch.testing.assert_close(next_state, expected_state)
    assert not next_state.requires_grad  # the search records no autograd graph (its weights are detached)
    np.testing.assert_allclose(logits, policy_logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reward, support_to_scalar(reward_logits, reward_support, width).numpy(), rtol=2e-4, atol=1e-3)
    np.testing.assert_allclose(value, support_to_scalar(value_logits, 20, width).numpy(), rtol=2e-4, atol=1e-3)
    floor = min(0.1, width)  # narrower bins give smaller values from the same random logits
    assert np.abs(value).max() > floor and np.abs(reward).max() > floor  # not a comparison of zeros


def test_the_residual_net_for_images_keeps_muzeros_interface():
    torch.manual_seed(0)
    model = MuZeroResNet((4, 96, 96), num_actions=6, channels=16, blocks=1, support_size=10, reward_support_size=5,
                         pixels=True)  # fmt: skip
    assert model.latent_shape == (16, 12, 12)  # 96 -> 48 -> 24 -> 12 by stride-2 convolutions
    frames = torch.randint(0, 256, (3, 4 * 96 * 96), dtype=torch.uint8)  # flattened, as the replay stores them
    state, policy, value = model.initial_inference(frames)
    assert state.shape == (3, 16, 12, 12) and policy.shape == (3, 6) and value.shape == (3, 21)
    assert state.flatten(1).min(1)[0].eq(0).all() and state.flatten(1).max(1)[0].eq(1).all()  # min-max scaled
    next_state, reward, policy2, value2 = model.recurrent_inference(state, torch.tensor([0, 3, 5]))
    assert next_state.shape == state.shape and reward.shape == (3, 11)
    assert torch.equal(policy, torch.zeros(3, 6)) and torch.equal(reward, torch.zeros(3, 11))  # a neutral start
    (value2.sum() + reward.sum() + policy2.sum()).backward()
    assert model.representation[0][0].weight.grad is not None  # differentiable through the unroll
    state, logits, root_value = root_inference(model, frames.numpy())
    result = run_policy(RootFnOutput(state, logits, root_value), search_callback(model), SearchConfig(num_simulations=8),
                        np.random.default_rng(0))  # fmt: skip
    assert (result.visit_counts.sum(-1) == 8).all()


def test_boards_are_two_planes_and_moves_the_cells_they_name():
    # TicTacToe from the mover's view: own pieces +1 at cells 0 and 4, the opponent's -1 at cell 8.
    planes = board_planes(torch.tensor([[1.0, 0, 0, 0, 1, 0, 0, 0, -1]]), (3, 3))
    assert planes.shape == (1, 2, 3, 3) and planes.dtype == torch.float32
    assert planes[0, 0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert planes[0, 1].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    cells = move_planes(9, (3, 3))  # a move per cell
    assert cells[5].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]] and cells.sum().item() == 9
    columns = move_planes(7, (6, 7))  # Connect Four: a move per column
    assert columns.shape == (7, 6, 7) and columns[2, :, 2].eq(1).all() and columns[2].sum().item() == 6
    with pytest.raises(ValueError, match="5 moves name neither the 42 cells nor the 7 columns"):
        move_planes(5, (6, 7))


def test_the_residual_net_for_boards_sees_the_planes_and_each_move_as_its_column():
    torch.manual_seed(0)
    model = MuZeroResNet((42,), num_actions=7, channels=8, blocks=1, support_size=5, reward_support_size=5,
                         board_grid=(6, 7))  # fmt: skip
    assert model.obs_shape == (2, 6, 7) and model.latent_shape == (8, 6, 7)
    assert "move_planes" not in model.state_dict()  # derived from the game, not saved with the weights
    seen = {}
    model.representation.register_forward_hook(lambda m, inputs, out: seen.__setitem__("obs", inputs[0]))
    model.dynamics_state.register_forward_hook(lambda m, inputs, out: seen.__setitem__("dyn", inputs[0]))
    boards = torch.zeros(2, 42)
    boards[0, 38], boards[1, 3] = 1.0, -1.0  # own piece at row 5 column 3; the opponent's at row 0 column 3
    state, _, _ = model.initial_inference(boards)
    assert seen["obs"][0, 0, 5, 3] == 1 and seen["obs"][0].sum() == 1
    assert seen["obs"][1, 1, 0, 3] == 1 and seen["obs"][1].sum() == 1
    model.recurrent_inference(state, torch.tensor([0, 6]))
    move = seen["dyn"][:, -1]  # the plane beside the hidden state's channels
    assert move[0, :, 0].eq(1).all() and move[0].sum() == 6 and move[1, :, 6].eq(1).all() and move[1].sum() == 6
    state, logits, root_value = root_inference(model, boards.numpy())
    result = run_policy(RootFnOutput(state, logits, root_value), search_callback(model), SearchConfig(num_simulations=8),
                        np.random.default_rng(0))  # fmt: skip
    assert (result.visit_counts.sum(-1) == 8).all()


@pytest.mark.parametrize("action_planes", ["value", "one-hot"])
def test_the_dynamics_see_the_action_as_one_shaded_plane_or_as_one_lit_plane_of_a(action_planes):
    torch.manual_seed(0)
    model = MuZeroResNet((4, 10, 10), num_actions=6, channels=8, blocks=1, support_size=5, reward_support_size=5,
                         action_planes=action_planes)  # fmt: skip
    seen = {}
    model.dynamics_state.register_forward_hook(lambda m, inputs, out: seen.__setitem__("dyn", inputs[0]))
    state, _, _ = model.initial_inference(torch.randint(0, 2, (3, 4, 10, 10)).float())
    next_state, _, _, _ = model.recurrent_inference(state, torch.tensor([0, 3, 5]))
    planes = seen["dyn"][:, 8:]  # beside the hidden state's 8 channels
    assert next_state.shape == state.shape
    if action_planes == "value":  # (a + 1) / A everywhere
        assert planes.shape == (3, 1, 10, 10)
        assert [len(planes[i].unique()) for i in range(3)] == [1, 1, 1]
        torch.testing.assert_close(planes[:, 0, 0, 0], torch.tensor([1 / 6, 4 / 6, 1.0]))
    else:  # plane a all ones, the others all zeros
        assert planes.shape == (3, 6, 10, 10)
        assert planes.sum((2, 3)).tolist() == [[100.0 * (a == b) for b in range(6)] for a in (0, 3, 5)]
    with pytest.raises(ValueError, match="without a board grid, 'one-hot'"):
        MuZeroResNet((42,), num_actions=7, board_grid=(6, 7), action_planes="one-hot")


def test_under_a_bfloat16_autocast_the_residual_net_rounds_its_convolutions_only():
    torch.manual_seed(0)
    model = MuZeroResNet((4, 10, 10), num_actions=6, channels=16, blocks=1, support_size=10, reward_support_size=5)
    for head in (model.prediction_policy, model.prediction_value, model.dynamics_reward):  # not the neutral start
        torch.nn.init.normal_(head[-1].weight, std=0.1)
    obs = torch.rand(8, 400)
    with torch.no_grad():
        state32, policy32, value32 = model.initial_inference(obs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            state16, policy16, value16 = model.initial_inference(obs)
            trunk16 = model.prediction_trunk(state16)
        # The heads read the rounded trunk in float32: the same as running them by hand outside the autocast.
        by_hand = model.prediction_value(trunk16.float())
    assert state16.dtype == torch.bfloat16 and policy16.dtype == value16.dtype == torch.float32
    assert torch.equal(value16, by_hand)
    assert not torch.equal(value16, value32)  # rounded, not replaced: close, not equal
    torch.testing.assert_close(value16, value32, atol=0.05, rtol=0)
    torch.testing.assert_close(policy16, policy32, atol=0.05, rtol=0)
