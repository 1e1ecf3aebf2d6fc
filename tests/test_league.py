"""League self-play: the opponent env (hand-played games), the league's sampling, snapshots, ratings and
checkpoint state, rollouts equal across backends, and train_ppo.py on TicTacToe end to end (resume keeps
the league; arena.py and play.py take the PPO run)."""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.networks import ActorCritic, BoardCNN
from envs.factory import board_grid, is_two_player
from training.errors import ConfigError
from training.league import (
    CURRENT,
    League,
    LeagueOpponents,
    LeagueOptions,
    OpponentVectorEnv,
    league_problems,
    reference_ids,
)
from training.ppo.config import PPOConfig, validate

ROOT = Path(__file__).resolve().parents[1]
TTT = "rlgames/TicTacToe-v0"


class FirstFreeCell(torch.nn.Module):
    """A stand-in policy that plays the lowest legal cell, with a weight `offset` that shifts its choice
    to the k-th legal cell, so snapshots with other weights play other moves."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def act(self, obs, generator=None, deterministic=False, memory=None, episode_starts=None):
        mask = obs["action_mask"].bool()
        k = int(self.offset)
        ranks = mask.cumsum(1) - 1  # each legal cell's rank among the legal cells
        pick = mask & (ranks == torch.minimum(torch.tensor(k), mask.sum(1, keepdim=True) - 1))
        action = pick.float().argmax(1)
        zeros = torch.zeros(len(action))
        return action, zeros, zeros, None


def test_board_games_declare_two_players_and_others_do_not():
    assert is_two_player(TTT) and is_two_player("rlgames/ConnectFour-v0")
    assert not is_two_player("CartPole-v1") and not is_two_player("no/such-env")


def test_opponent_env_plays_whole_games_from_the_learners_side():
    """Both sides play the lowest free cell: as X the learner wins with its 4th move (cells 0 2 4 6, the
    diagonal 2-4-6); as O it loses after its 3rd (cells 1 3 5), X completing 2-4-6."""
    env = OpponentVectorEnv(TTT, 8, seed=0, policy=FirstFreeCell(), opponents=LeagueOpponents({CURRENT: 1.0}))
    obs, _ = env.reset(seed=list(range(8)))
    sides = env.side.copy()
    assert set(sides) == {1, -1}  # both sides drawn among 8 games (seed 0)
    # Where the learner is O, the opponent has opened in cell 0: the learner sees it as -1.
    assert (obs["obs"][sides == -1][:, 0] == -1).all() and (obs["obs"][sides == 1] == 0).all()
    results, lengths = {}, {}
    for _ in range(4):
        action = FirstFreeCell().act({k: torch.as_tensor(v) for k, v in obs.items()})[0].numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated.any()
        for i in np.flatnonzero(terminated):
            results.setdefault(i, reward[i])
            lengths.setdefault(i, info["final_info"]["episode"]["l"][i])
            assert info["final_info"]["episode"]["r"][i] == reward[i]
            assert info["final_info"]["opponent"][i] == CURRENT and info["final_info"]["_opponent"][i]
        assert (reward[~terminated] == 0).all()
    assert sorted(results) == list(range(8))
    for i in range(8):
        assert (results[i], lengths[i]) == ((1.0, 4) if sides[i] == 1 else (-1.0, 3))


def test_opponents_follow_the_probabilities_and_new_snapshots_arrive():
    policy = FirstFreeCell()
    shifted = {"offset": torch.tensor(1.0)}
    env = OpponentVectorEnv(TTT, 64, 1, policy, LeagueOpponents({CURRENT: 0.25, 0: 0.75}, {0: shifted}))
    env.reset(seed=list(range(64)))
    assert abs((env.opponent == 0).mean() - 0.75) < 0.15
    assert float(env.nets[0].offset) == 1.0 and float(policy.offset) == 0.0  # a copy, with the snapshot's weights
    env.update_opponents(LeagueOpponents({CURRENT: 0.5, 0: 0.25, 1: 0.25}, {1: {"offset": torch.tensor(2.0)}}))
    assert float(env.nets[1].offset) == 2.0
    # Snapshot 0 leaves the league: its net stays while games against it go on, then goes.
    env.update_opponents(LeagueOpponents({CURRENT: 0.5, 1: 0.5}))
    assert 0 in env.nets
    env.opponent[:] = CURRENT
    env.update_opponents(LeagueOpponents({CURRENT: 0.5, 1: 0.5}))
    assert set(env.nets) == {1}


def test_reference_players_join_the_league_and_play_their_rule():
    """With the perfect player in the pool and drawn for every game, the learner (lowest free cell) never
    wins, and each game is recorded against the perfect player's id."""
    league = League(LeagueOptions(references=("perfect",), current_fraction=0.0, rating_games=0), TTT,
                    lambda w: FirstFreeCell(), seed=0)  # fmt: skip
    assert league.probabilities() == {CURRENT: 0.0, reference_ids(TTT)["perfect"]: 1.0}
    env = OpponentVectorEnv(TTT, 4, 0, FirstFreeCell(), league.opponents())
    obs, _ = env.reset(seed=[0, 1, 2, 3])
    results = []
    while len(results) < 12:
        action = FirstFreeCell().act({k: torch.as_tensor(v) for k, v in obs.items()})[0].numpy()
        obs, reward, terminated, _, info = env.step(action)
        results += [(info["final_info"]["opponent"][i], reward[i]) for i in np.flatnonzero(terminated)]
    assert {o for o, _ in results} == {reference_ids(TTT)["perfect"]} and max(r for _, r in results) <= 0
    league.record(np.array([o for o, _ in results]), np.array([r for _, r in results]))
    assert league.scalars()["league/score_vs_perfect"] <= 0.5
    assert "--league.references lookahead: rlgames/TicTacToe-v0 has random, perfect" in " ".join(
        league_problems(LeagueOptions(references=("lookahead",)), TTT)
    )


def make_league(**options) -> League:
    return League(LeagueOptions(rating_games=0, **options), TTT, lambda w: FirstFreeCell(), seed=0)


def test_pfsp_weights_harder_opponents_by_one_minus_score_squared():
    league = make_league(current_fraction=0.5, sampling="pfsp")
    a = league.add_snapshot({"offset": torch.tensor(0.0)}, 0)
    b = league.add_snapshot({"offset": torch.tensor(1.0)}, 10)
    # Against a: 3 wins in 3 games, p = 3.5 / 4; against b: 1 loss, p = 0.5 / 2.
    league.record(np.array([a, a, a, b, CURRENT]), np.array([1.0, 1.0, 1.0, -1.0, 0.0]))
    wa, wb = (1 - 3.5 / 4) ** 2, (1 - 0.5 / 2) ** 2
    p = league.probabilities()
    assert p[CURRENT] == 0.5
    assert p[a] == pytest.approx(0.5 * wa / (wa + wb)) and p[b] == pytest.approx(0.5 * wb / (wa + wb))
    assert league.score_vs_pool() == pytest.approx(3 / 4)  # games against the current policy do not count
    uniform = make_league(sampling="uniform", current_fraction=0.2)
    uniform.add_snapshot({"offset": torch.tensor(0.0)}, 0)
    uniform.add_snapshot({"offset": torch.tensor(0.0)}, 1)
    assert uniform.probabilities() == pytest.approx({CURRENT: 0.2, 0: 0.4, 1: 0.4})


def test_snapshots_come_on_schedule_or_by_score_and_the_oldest_leave():
    league = make_league(snapshot_every=10, snapshot_score=0.9, max_snapshots=2)
    assert league.wants_snapshot(3)  # an empty league wants its first member at once
    league.add_snapshot({"offset": torch.tensor(0.0)}, 0)
    assert not league.wants_snapshot(3) and league.wants_snapshot(20)
    league.record(np.zeros(99, np.int64), np.ones(99))
    assert not league.wants_snapshot(3)  # 99 games are not yet the 100 the score is taken over
    league.record(np.zeros(1, np.int64), np.ones(1))
    assert league.wants_snapshot(3)
    league.add_snapshot({"offset": torch.tensor(1.0)}, 3)
    assert not league.wants_snapshot(4)  # the score starts again against the new pool
    league.add_snapshot({"offset": torch.tensor(2.0)}, 10)
    assert sorted(league.snapshots) == [1, 2] and 0 not in league.probabilities()


def test_league_state_round_trips_and_ratings_fill_the_elo_table():
    league = League(LeagueOptions(rating_games=4), TTT, lambda w: FirstFreeCell(), seed=0)
    league.add_snapshot({"offset": torch.tensor(0.0)}, 0)
    league.add_snapshot({"offset": torch.tensor(1.0)}, 10)
    league.record(np.array([0, 1, 1]), np.array([1.0, 0.0, -1.0]))
    # Each snapshot played 4 games with random and with perfect, and the second 4 with the first.
    assert [(r.a, r.b, r.games) for r in league.rating_results] == [
        ("update 0", "random", 4), ("update 0", "perfect (minimax)", 4),
        ("update 10", "random", 4), ("update 10", "perfect (minimax)", 4), ("update 10", "update 0", 4),
    ]  # fmt: skip
    assert all(r.wins == 0 for r in league.rating_results if r.b == "perfect (minimax)")
    scalars = league.scalars()
    assert scalars["league/snapshots"] == 2 and scalars["league/elo_perfect"] > scalars["league/elo"]
    assert scalars["league/elo_random"] == 0.0 and "league/score_vs_pool" in scalars  # Elo anchored at random
    restored = League(LeagueOptions(rating_games=4), TTT, lambda w: FirstFreeCell(), seed=0)
    restored.load_state_dict(league.state_dict())
    assert restored.probabilities() == league.probabilities() and restored.scalars() == scalars
    assert restored.next_id == 2 and restored.snapshot_updates == {0: 0, 1: 10}


def test_two_player_games_need_an_evaluation_stop_rule_and_valid_league_options():
    base = dict(env_id=TTT, solved_by="evaluation", num_envs=4, num_steps=8, num_minibatches=2, total_timesteps=64)
    validate(PPOConfig(**base))
    with pytest.raises(ConfigError, match="--solved-by evaluation"):
        validate(PPOConfig(**{**base, "solved_by": "training"}))
    with pytest.raises(ConfigError, match="--league.current-fraction must be in"):
        validate(PPOConfig(**base, league=LeagueOptions(current_fraction=1.5)))
    with pytest.raises(ConfigError, match="--policy-memory lstm is not supported"):
        validate(PPOConfig(**base, policy_memory="lstm"))


def league_rollouts(backend: str, num_workers: int, ray_address: str | None = None) -> list:
    """Two rollouts of 4 TicTacToe envs in num_workers workers against a league of the current policy and
    one snapshot, a second snapshot arriving between them: actions, rewards, opponents and returns."""
    from training.ppo.backends import make_executor
    from training.ppo.config import apply_preset
    from training.ppo.train import build_agent

    cfg = apply_preset(PPOConfig(env_id=TTT))
    env = gym.make(TTT)
    torch.manual_seed(0)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    league = League(LeagueOptions(rating_games=0), TTT, lambda w: None, seed=0)
    league.add_snapshot({k: v + 0.05 for k, v in agent.state_dict().items()}, 0)
    out = []
    with make_executor(backend, TTT, env.observation_space, env.action_space, agent, 4, num_workers, 16, 5,
                       worker_timeout=60, ray_address=ray_address, opponents=league.opponents()) as executor:  # fmt: skip
        executor.set_weights(agent.state_dict(), 0)
        for k in range(2):
            rollout = executor.collect()
            out.append({"actions": rollout.actions.copy(), "rewards": rollout.rewards.copy(),
                        "opponents": rollout.episode_opponents.copy(), "returns": rollout.episode_returns.copy()})  # fmt: skip
            league.record(rollout.episode_opponents, rollout.episode_returns)
            league.add_snapshot({k: v - 0.05 for k, v in agent.state_dict().items()}, k + 1)
            executor.set_opponents(league.opponents())
    return out


def test_league_rollouts_are_identical_in_process_and_in_worker_processes():
    local, processes = league_rollouts("inprocess", 2), league_rollouts("multiprocess", 2)
    for a, b in zip(local, processes, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Games against the current policy and both snapshots, the second sent between the rollouts.
    assert set(local[0]["opponents"]) <= {CURRENT, 0}
    assert set(np.concatenate([r["opponents"] for r in local])) == {CURRENT, 0, 1}


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_train_ppo_self_play_on_tictactoe_resumes_the_league_and_plays_in_the_arena(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = ["--env-id", TTT, "--runs-dir", str(tmp_path), "--num-envs", "8", "--num-steps", "32",
              "--eval-every", "0", "--eval-episodes", "10", "--league.snapshot-every", "2",
              "--league.rating-games", "4", "--backend", "multiprocess", "--num-workers", "2",
              "--augment-symmetries"]  # fmt: skip
    first = run("launch/train_ppo.py", *common, "--total-timesteps", "1280")
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    payload = torch.load(sorted((run_dir / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    league = payload["league"]
    assert sorted(league["snapshot_updates"].values()) == [0, 2, 4]  # the initial policy, then every 2 updates
    resumed = run("launch/train_ppo.py", "--resume", str(run_dir), "--total-timesteps", "2560")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    payload = torch.load(sorted((run_dir / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    league = payload["league"]
    assert sorted(league["snapshot_updates"].values()) == [0, 2, 4, 6, 8, 10]  # the same league, grown
    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"league/elo", "league/elo_perfect", "league/elo_random", "league/snapshots"} <= tags
    arena = run("launch/arena.py", str(run_dir), "--games", "4")
    assert arena.returncode == 0, arena.stderr[-3000:]
    assert "ppo" in arena.stdout and "perfect (minimax)" in arena.stdout
    # A person moving first tries every cell in turn (taken ones get another try) until the game ends.
    moves = "".join(f"{cell}\n" for cell in range(1, 10))
    play = subprocess.run([sys.executable, "launch/play.py", str(run_dir), "--no-window", "--games", "1"], cwd=ROOT,
                          input=moves, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert play.returncode == 0, play.stderr[-3000:]
    assert "its value estimate for itself" in play.stdout and "Game over" in play.stdout
    assert "1 game(s): you won" in play.stdout


def test_board_cnn_reads_own_and_opponent_stones_as_two_planes_and_respects_the_mask():
    assert board_grid("rlgames/ConnectFour-v0") == (6, 7) and board_grid(TTT) == (3, 3)
    assert board_grid("CartPole-v1") is None
    env = gym.make("rlgames/ConnectFour-v0")
    torch.manual_seed(0)
    net = ActorCritic(env.observation_space, env.action_space, board_grid=(6, 7))
    assert isinstance(net.trunk, BoardCNN) and net.obs_normalizer is None
    seen = []
    net.trunk.net[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    board = torch.zeros(1, 42)
    board[0, 41], board[0, 40] = 1.0, -1.0  # own disc bottom right, the opponent's beside it
    mask = torch.tensor([[1, 1, 1, 0, 1, 1, 1]], dtype=torch.int8)
    dist, value, _ = net({"obs": board, "action_mask": mask})
    planes = seen[0]
    assert planes.shape == (1, 2, 6, 7) and planes[0, 0, 5, 6] == 1 and planes[0, 1, 5, 5] == 1 and planes.sum() == 2
    assert value.shape == (1,) and dist.logits[0, 3].exp() == 0
    # The opponent's disc elsewhere is another position to it.
    moved = board.clone()
    moved[0, 40], moved[0, 39] = 0.0, -1.0
    assert not torch.allclose(net.get_value({"obs": moved, "action_mask": mask}), value)


def _symmetry_tensors(env_id: str) -> tuple[torch.Tensor, ...]:
    from envs.symmetries import env_symmetries
    from training.ppo.train import symmetry_tensors

    return symmetry_tensors(env_symmetries(env_id))


def test_symmetric_samples_mirror_the_board_mask_and_move_and_keep_the_rollouts_odds_and_targets():
    from training.ppo.train import symmetric_samples

    n = 64
    boards = torch.zeros(n, 42)
    boards[:, 35] = 1.0  # own disc bottom left (row 5, column 0), the opponent's on top of it
    boards[:, 28] = -1.0
    boards[:, 41] = torch.arange(n) % 2  # and an own disc bottom right in every other sample
    mask = torch.ones(n, 7, dtype=torch.int8)
    mask[:, 1] = 0  # column 1 full (as if), so the mirrored mask closes column 5
    actions = torch.arange(n) % 7
    actions[actions == 1] = 2
    batch = {"obs": {"obs": boards, "action_mask": mask}, "actions": actions, "log_probs": -torch.rand(n),
             "values": torch.randn(n), "advantages": torch.randn(n), "returns": torch.randn(n)}  # fmt: skip
    out = symmetric_samples(batch, _symmetry_tensors("rlgames/ConnectFour-v0"), torch.Generator().manual_seed(1))
    grid = out["obs"]["obs"].reshape(n, 6, 7)
    mirrored = grid[:, 4, 6] == -1  # the opponent's disc over column 0 moved over column 6
    assert 0 < mirrored.sum() < n  # both kinds drawn
    same = ~mirrored
    assert torch.equal(out["obs"]["obs"][same], boards[same]) and torch.equal(out["actions"][same], actions[same])
    assert torch.equal(out["obs"]["action_mask"][same], mask[same])
    # Mirrored: column c is column 6 - c, for the discs, the mask and the move.
    assert torch.equal(grid[mirrored], boards[mirrored].reshape(-1, 6, 7).flip(2))
    assert (grid[mirrored][:, 5, 6] == 1).all() and (out["obs"]["action_mask"][mirrored][:, 5] == 0).all()
    assert out["obs"]["action_mask"][mirrored].sum() == 6 * mirrored.sum()
    assert torch.equal(out["actions"][mirrored], 6 - actions[mirrored])
    # The acting policy's odds, its value and the targets stay the sample's own, mirrored or not.
    for name in ("log_probs", "values", "advantages", "returns"):
        assert out[name] is batch[name], name


def test_symmetric_samples_turn_tictactoe_boards_and_moves_alike():
    from training.ppo.train import symmetric_samples

    perms = _symmetry_tensors(TTT)
    boards = torch.arange(9.0).repeat(200, 1)  # cell c holds c: the transformed board names its source cells
    actions = torch.arange(200) % 9
    mask = (torch.arange(9) == actions[:, None]).to(torch.int8)  # only the move played is legal
    batch = {"obs": {"obs": boards, "action_mask": mask}, "actions": actions, "log_probs": torch.zeros(200)}
    out = symmetric_samples(batch, perms, torch.Generator().manual_seed(0))
    seen = {tuple(b.long().tolist()) for b in out["obs"]["obs"]}
    assert len(seen) == 8  # all eight rotations and reflections drawn
    # The move lands where its cell went, and the mask travels with it.
    moved = out["obs"]["obs"][torch.arange(200), out["actions"]]
    assert torch.equal(moved.long(), actions)
    assert torch.equal(out["obs"]["action_mask"].argmax(1), out["actions"])


def test_symmetric_samples_mirror_cartpole_states_and_pushes():
    """A vector observation: mirrored samples are the negated states with the other push, the rest as is."""
    from training.ppo.train import symmetric_samples

    states = torch.rand(100, 4) + 0.1  # all positive: a negated row is a mirrored one
    actions = torch.arange(100) % 2
    batch = {"obs": states, "actions": actions, "advantages": torch.randn(100)}
    out = symmetric_samples(batch, _symmetry_tensors("CartPole-v1"), torch.Generator().manual_seed(0))
    mirrored = out["obs"][:, 0] < 0
    assert 20 < mirrored.sum() < 80
    assert torch.equal(out["obs"][mirrored], -states[mirrored]) and torch.equal(out["obs"][~mirrored], states[~mirrored])
    assert torch.equal(out["actions"][mirrored], 1 - actions[mirrored])
    assert torch.equal(out["actions"][~mirrored], actions[~mirrored]) and out["advantages"] is batch["advantages"]


def test_symmetry_augmentation_is_for_games_with_symmetries():
    validate(PPOConfig(env_id="rlgames/ConnectFour-v0", augment_symmetries=True, solved_by="evaluation"))
    validate(PPOConfig(env_id=TTT, augment_symmetries=True, async_rollouts=True, backend="multiprocess", solved_by="evaluation"))
    validate(PPOConfig(env_id="CartPole-v1", augment_symmetries=True))
    with pytest.raises(ConfigError, match="--augment-symmetries is for games with symmetries.*MountainCar-v0 declares none"):
        validate(PPOConfig(env_id="MountainCar-v0", augment_symmetries=True))
