"""MuZero's training command end to end: learning CartPole within a step budget, the run's outputs,
watching and evaluating a MuZero run, resuming it, and TicTacToe and Connect Four self-play."""

import dataclasses
import json
import math
import multiprocessing
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import imageio
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training.errors import ConfigError
from training.muzero.config import MuZeroConfig, apply_muzero_preset, validate_muzero
from training.muzero.train import train_muzero

ROOT = Path(__file__).resolve().parents[1]


def _launch(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})  # fmt: skip


def _learn_cartpole(seed: int, runs_dir: str):
    cfg = apply_muzero_preset(MuZeroConfig(runs_dir=runs_dir, seed=seed, total_timesteps=3000, eval_every=1000,
                                           eval_episodes=10, stop_return=LEARNED, progress=False))  # fmt: skip
    return train_muzero(cfg)


# A greedy 10-episode mean that a policy reaches only by learning (uniform random play averages ~22).
LEARNED = 150.0


# ~110 s on this machine (2026-12-01), the suite's longest test: with it the suite passed 10 minutes.
@pytest.mark.slow
def test_muzero_learns_cartpole_on_most_seeds(tmp_path):
    """Seeds 1-3 with CartPole's preset, two at a time, each stopping at its first greedy evaluation
    >= 150 (every 1,000 env steps, up to 3,000): at least 2 of 3 get there. Not one seed's trajectory:
    float rounding differs between CPUs, and so do the runs. Measured with the defaults (Gumbel, 16
    simulations) on an AMD EPYC (2026-12-03): seeds 1-3 reached 153 (2k), 478 (2k) and not seed 3 (116 at
    3k); with CartPole's mirror (2026-12-05, same CPU) 418 (1k), 500 (1k) and 218 (3k); with the evaluation
    searches also averaged over the mirror (the default since, same CPU) 472 (1k), 500 (1k) and 181 (3k);
    with CartPole's preset weighting the value loss 1 (2026-12-07, same CPU) 500 (1k), 334 (1k) and 242 (2k);
    with the preset's 4 self-play games (2026-12-07, same CPU) 332 (2k), 500 (1k) and 204 (1k);
    with the earlier pUCT-25 default, on an Intel Xeon seeds 1-5 reached 387, 120, 437, 490 and 151."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_learn_cartpole, [(seed, str(tmp_path)) for seed in (1, 2, 3)])
    learned = [r for r in results if r.solved and r.eval_return >= LEARNED and r.global_step <= 3000]
    assert len(learned) >= 2, [r.eval_history for r in results]
    result = learned[0]
    acc = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"losses/value_loss", "losses/reward_loss", "losses/policy_loss", "search/root_visit_entropy",
            "search/root_value", "eval/episodic_return", "charts/episodic_return"} <= tags  # fmt: skip


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("muzero_runs")
    proc = _launch("train_muzero.py", "--total-timesteps", "480", "--warmup-steps", "160", "--batch-size", "32",
                   "--num-simulations", "6", "--eval-episodes", "2", "--eval-every", "0", "--runs-dir", str(runs),
                   "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = runs.iterdir()
    return proc, run_dir


def test_the_command_prints_where_everything_is(short_run):
    proc, run_dir = short_run
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(acc.Scalars("eval/episodic_return")) == 1  # the final evaluation, logged once
    assert re.search(r"(finished|solved) CartPole-v1 after 480 env steps", proc.stdout)
    for what in ("run folder:", "checkpoint:", f"watch:       python launch/watch.py {run_dir}"):
        assert what in proc.stdout
    assert (run_dir / "checkpoints" / "best.pt").is_file()


def test_the_run_logs_what_tells_a_stuck_run_from_a_learning_one(short_run):
    """The value error against the n-step targets, the replay's priority spread and the prior's entropy
    beside the search's: logged at every step that learned, with values that can be true."""
    _, run_dir = short_run
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    value_error = [e.value for e in acc.Scalars("losses/value_error")]
    assert value_error and all(v >= 0 for v in value_error)
    spread = {k: [e.value for e in acc.Scalars(f"replay/priority_{k}")] for k in ("median", "p90", "max")}
    assert all(m <= p <= top for m, p, top in zip(*spread.values(), strict=True))
    prior = [e.value for e in acc.Scalars("search/prior_entropy")]
    assert prior and all(0 <= v <= np.log(2) + 1e-6 for v in prior)  # CartPole: two actions


def test_watch_and_evaluate_play_a_muzero_run(short_run):
    _, run_dir = short_run
    proc = _launch("watch.py", str(run_dir), "--episodes", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (length, path) = re.search(r"episode 1: return [\d.]+, length (\d+) -> (\S+)", proc.stdout).groups()
    assert "MUZERO after 480 env steps" in proc.stdout
    assert imageio.get_reader(path).count_frames() == int(length) + 1
    proc = _launch("evaluate.py", str(run_dir), "--episodes", "3")
    assert proc.returncode == 0 and "over 3 episodes" in proc.stdout


def test_evaluate_compares_the_search_with_the_prior_it_learned(short_run):
    """--num-simulations replaces the run's search (0: the prior alone), the way to see whether the search
    improves on the policy the model learned; a negative count or a PPO run gets one line and exit 2."""
    _, run_dir = short_run
    for n, says in (("0", "no search: the prior alone"), ("3", "3 simulations a move")):
        proc = _launch("evaluate.py", str(run_dir), "--episodes", "2", "--num-simulations", n)
        assert proc.returncode == 0 and says in proc.stdout and "over 2 episodes" in proc.stdout
    proc = _launch("evaluate.py", str(run_dir), "--episodes", "2", "--num-simulations", "-1")
    assert proc.returncode == 2 and "--num-simulations must be >= 0" in proc.stderr


def test_symmetric_search_defaults_to_evaluation_for_single_player_games_and_off_for_boards(short_run):
    from training.muzero.config import search_symmetries, symmetric_search

    cartpole, board = MuZeroConfig(), MuZeroConfig(env_id="rlgames/ConnectFour-v0")
    assert (symmetric_search(cartpole), symmetric_search(board)) == ("evaluation", "off")
    assert len(search_symmetries(cartpole, self_play=False)) == 2 and search_symmetries(cartpole, self_play=True) is None
    assert search_symmetries(board, self_play=False) is None
    everywhere = dataclasses.replace(board, symmetric_search="all")
    assert len(search_symmetries(everywhere, self_play=True)) == len(search_symmetries(everywhere, self_play=False)) == 2
    assert search_symmetries(MuZeroConfig(env_id="MountainCar-v0", symmetric_search="all"), self_play=True) is None
    _, run_dir = short_run  # the run's own evaluations averaged over CartPole's mirror, as its config says
    assert json.loads((run_dir / "config.json").read_text())["resolved_symmetric_search"] == "evaluation"


def test_evaluate_averages_the_search_over_the_games_symmetries_when_asked(short_run):
    """--symmetric-search on/off overrides what the run's evaluations did (CartPole's mirror: 2 copies of
    each search); a game that declares no symmetries is refused with a ConfigError (one line, exit 2)."""
    _, run_dir = short_run
    proc = _launch("evaluate.py", str(run_dir), "--episodes", "2", "--symmetric-search", "on")
    assert proc.returncode == 0 and "averaged over the game's 2 symmetries" in proc.stdout, proc.stderr[-2000:]
    proc = _launch("evaluate.py", str(run_dir), "--episodes", "2", "--symmetric-search", "off")
    assert proc.returncode == 0 and "symmetries" not in proc.stdout
    from training.checkpoint import find_checkpoint, load_checkpoint
    from training.muzero.actor import load_muzero_actor

    payload = load_checkpoint(find_checkpoint(run_dir))
    payload["config"] = json.dumps({**json.loads(payload["config"]), "env_id": "MountainCar-v0"})
    with pytest.raises(ConfigError, match="--symmetric-search on: MountainCar-v0 declares no symmetries"):
        load_muzero_actor(payload, symmetric_search=True)


def test_the_prior_alone_acts_on_the_most_likely_legal_move():
    from agents.muzero.networks import root_inference
    from training.muzero.actor import MuZeroActor
    from training.muzero.config import build_model, search_config

    cfg = MuZeroConfig(env_id="rlgames/TicTacToe-v0")
    torch.manual_seed(0)
    model = build_model(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    actor = MuZeroActor(model, dataclasses.replace(search_config(cfg), num_simulations=0))
    obs = torch.zeros(2, 9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    logits = root_inference(model, obs.numpy()).prior_logits
    mask[1, logits[1].argmax()] = False  # the favourite is taken on the second board
    action, _, value = actor.act({"obs": obs, "action_mask": mask})
    assert action[0] == logits[0].argmax() and action[1] == np.where(mask[1].numpy(), logits[1], -np.inf).argmax()
    sampled = {int(actor.act({"obs": obs, "action_mask": mask}, deterministic=False)[0][1]) for _ in range(200)}
    assert len(sampled) > 1 and int(logits[1].argmax()) not in sampled


def test_resume_continues_the_run(short_run, tmp_path):
    import shutil

    _, run_dir = short_run
    copy = shutil.copytree(run_dir, tmp_path / run_dir.name)
    result = train_muzero(MuZeroConfig(resume=str(copy), progress=False))
    assert result.run_dir == copy and result.global_step == 480  # the saved budget was already spent


def test_a_resumed_run_goes_on_with_the_checkpoints_replay(short_run, tmp_path):
    """The periodic checkpoint holds the replay (best.pt does not: it is for playing); `--resume` puts its
    games back, so the first round after the resume logs the replay's positions on top of the checkpoint's
    instead of starting again from nothing; --no-checkpoint-replay (changeable on resume) leaves it out."""
    import shutil

    _, run_dir = short_run
    (saved,) = (run_dir / "checkpoints").glob("step_*.pt")
    replay = torch.load(saved, weights_only=True)["replay"]
    positions = int(replay["num_starts"].sum())
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert positions > 100 and acc.Scalars("charts/replay_positions")[-1].value == positions
    assert "replay" not in torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)

    from training.muzero.config import parse_muzero_config

    copy = shutil.copytree(run_dir, tmp_path / run_dir.name)
    # In this process (the command's own parser): a fresh interpreter would add seconds, not coverage.
    cfg = parse_muzero_config(["--resume", str(copy), "--total-timesteps", "520", "--no-checkpoint-replay",
                               "--no-progress"])  # fmt: skip
    assert train_muzero(cfg).global_step == 520
    acc = EventAccumulator(str(copy), size_guidance={"scalars": 0})
    acc.Reload()
    after = [e.value for e in acc.Scalars("charts/replay_positions") if e.step > 480]
    assert after and after[0] >= positions, (after, positions)
    newest = sorted((copy / "checkpoints").glob("step_*.pt"))[-1]
    assert newest.name.endswith("520.pt") and "replay" not in torch.load(newest, weights_only=True)


def test_tictactoe_self_play_runs(tmp_path):
    cfg = MuZeroConfig(env_id="rlgames/TicTacToe-v0", runs_dir=str(tmp_path), total_timesteps=320, warmup_steps=160,
                       batch_size=32, num_simulations=8, eval_every=0, eval_episodes=2, progress=False, td_steps=9,
                       reanalyse_policy_fraction=0.5)  # fmt: skip
    result = train_muzero(cfg)
    assert result.global_step == 320 and result.episodes >= 320 // 9
    acc = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    losing = acc.Scalars("eval/losing_moves")  # the audit against every perfect line, beside the match
    assert len(losing) == 1 and losing[0].value >= 0
    proc = _launch("evaluate.py", str(result.run_dir), "--episodes", "4", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"over 4 episodes\n\(games against the perfect minimax player, .*\)\n\d+ losing moves in the \d+ "
                     r"positions met", proc.stdout)  # fmt: skip


@pytest.mark.parametrize("board_net", ["mlp", "cnn"])
def test_connect_four_trains_and_is_evaluated_against_the_lookahead_player(tmp_path, board_net):
    proc = _launch("train_muzero.py", "--env-id", "rlgames/ConnectFour-v0", "--total-timesteps", "200",
                   "--warmup-steps", "100", "--batch-size", "16", "--num-simulations", "6", "--eval-every", "100",
                   "--eval-episodes", "2", "--board-net", board_net, "--res-channels", "8", "--runs-dir", str(tmp_path),
                   "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished rlgames/ConnectFour-v0 after 200 env steps" in proc.stdout  # no solved threshold to stop at
    (run_dir,) = tmp_path.iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    results = [e.value for e in acc.Scalars("eval/episodic_return")]  # match results, +1 win .. -1 loss
    assert len(results) >= 2 and all(-1 <= r <= 1 for r in results)
    assert "eval/losing_moves" not in acc.Tags()["scalars"]  # the audit needs a perfect player: TicTacToe's
    proc = _launch("evaluate.py", str(run_dir), "--episodes", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "over 2 episodes\n(games against a 4-ply lookahead player, half of them moving first" in proc.stdout


def test_self_play_temperature_defaults_to_greedier_play_outside_board_games():
    from training.muzero.config import sampling_moves, visit_temperature

    assert visit_temperature(MuZeroConfig()) == 0.25
    assert visit_temperature(MuZeroConfig(env_id="rlgames/TicTacToe-v0")) == 1.0
    assert visit_temperature(MuZeroConfig(env_id="rlgames/TicTacToe-v0", visit_temperature=0.5)) == 0.5
    with pytest.raises(ConfigError, match="--visit-temperature must be > 0"):
        validate_muzero(MuZeroConfig(visit_temperature=0.0))
    # board games sample only their openings; control tasks every move (at the lower temperature)
    assert sampling_moves(MuZeroConfig()) == 0
    assert sampling_moves(MuZeroConfig(env_id="rlgames/TicTacToe-v0")) == 2
    assert sampling_moves(MuZeroConfig(env_id="rlgames/TicTacToe-v0", sampling_moves=0)) == 0
    with pytest.raises(ConfigError, match="--sampling-moves must be >= 0"):
        validate_muzero(MuZeroConfig(sampling_moves=-1))


def test_root_noise_flags_reach_the_self_play_search_and_are_range_checked():
    from training.muzero.config import search_config

    search = search_config(MuZeroConfig(env_id="rlgames/ConnectFour-v0", root_dirichlet_alpha=0.5,
                                        root_exploration_fraction=0.1))  # fmt: skip
    assert (search.dirichlet_alpha, search.root_exploration_fraction) == (0.5, 0.1)
    assert search_config(MuZeroConfig()).root_exploration_fraction == 0.25  # the paper's
    with pytest.raises(ConfigError, match=r"--root-dirichlet-alpha must be a finite number > 0 \(got 0.0\)"):
        validate_muzero(MuZeroConfig(root_dirichlet_alpha=0.0))
    with pytest.raises(ConfigError, match="--root-exploration-fraction"):
        validate_muzero(MuZeroConfig(root_exploration_fraction=1.5))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="--num-simulations must be > 0.*smaller than one --batch-size"):
        validate_muzero(dataclasses.replace(MuZeroConfig(), num_simulations=0, replay_capacity=10))
    with pytest.raises(ConfigError, match=r"--reanalyse-policy-fraction must lie in \[0, 1\] \(got 1.5\)"):
        validate_muzero(MuZeroConfig(reanalyse_policy_fraction=1.5))
    with pytest.raises(ConfigError, match="plays Discrete action spaces"):
        train_muzero(MuZeroConfig(env_id="Pendulum-v1", runs_dir="/tmp/never"))


def test_search_summary_shows_the_root_visits_of_the_move_played(short_run):
    import torch

    from training.trained_agent import load_trained_agent

    _, run_dir = short_run
    actor = load_trained_agent(run_dir).policy
    assert actor.search_summary() == []
    obs = {"obs": torch.tensor([[0.05, -0.2, 0.03, 0.1]])}
    # CartPole's evaluations search the state and its mirror: the summary adds both searches' visits.
    actor.act(obs, deterministic=True)
    _, visits, _ = actor.search_summary()
    assert visits.endswith(" (2 searches)")
    assert sum(int(v) for v in visits.removeprefix("visits ").split()[:2]) == 2 * actor.search.num_simulations
    actor.symmetries = None  # one search
    action, _, value = actor.act(obs, deterministic=True)
    root_value, visits, q = actor.search_summary()
    counts = [int(v) for v in visits.removeprefix("visits ").split()]
    assert sum(counts) == actor.search.num_simulations and counts[int(action[0])] == max(counts)  # Gumbel: among the most visited
    assert root_value == f"root value {value[0]:.2f}" and len(q.split()) == 3  # "Q" and one value per action


def test_watch_overlay_of_a_muzero_run_writes_its_frames(short_run):
    _, run_dir = short_run
    proc = _launch("watch.py", str(run_dir), "--episodes", "1", "--overlay", "--gif")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"episode 1: return [\d.]+, length \d+ -> \S+\.gif", proc.stdout)


class _ImageCorridor(gym.Env):
    """A corridor of 6 cells seen as a 1 x 3 x 6 image (the agent's cell lit); reaching the right end pays 1."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (1, 3, 6), np.uint8)
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self):
        image = np.zeros((1, 3, 6), np.uint8)
        image[0, 1, self.position] = 255
        return image

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.t = 0, 0
        return self._obs(), {}

    def step(self, action):
        self.position = min(5, max(0, self.position + (1 if action == 1 else -1)))
        self.t += 1
        done = self.position == 5
        return self._obs(), float(done), done, self.t >= 20 and not done, {}


def test_image_observations_train_the_residual_net(tmp_path):
    from agents.muzero.networks import MuZeroResNet
    from training.muzero.config import build_model

    gym.register("tests/ImageCorridor-v0", entry_point=_ImageCorridor)
    try:
        cfg = MuZeroConfig(env_id="tests/ImageCorridor-v0", runs_dir=str(tmp_path), total_timesteps=240,
                           warmup_steps=80, batch_size=16, num_simulations=4, eval_episodes=2, eval_every=0,
                           res_channels=8, res_blocks=1, learner_precision="bfloat16", action_planes="one-hot",
                           progress=False)  # fmt: skip
        model = build_model(cfg)
        assert isinstance(model, MuZeroResNet) and model.action_planes == "one-hot"
        result = train_muzero(cfg)
    finally:
        gym.registry.pop("tests/ImageCorridor-v0")
    assert result.global_step == 240 and result.eval_return is not None
    acc = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert np.isfinite([e.value for e in acc.Scalars("losses/value_loss")]).all()
    # The update's convolutions ran under the bfloat16 autocast the run asked for (and says so).
    assert json.loads((result.run_dir / "config.json").read_text())["resolved_learner_precision"] == "bfloat16"


@pytest.mark.parametrize("flags, refusal", [
    (("--learner-precision", "bfloat16"), "--learner-precision bfloat16 is for MuZero's residual conv net"),
    (("--action-planes", "one-hot"), "--action-planes one-hot is for image observations (MinAtar, Atari); CartPole-v1's model is an MLP"),
    (("--env-id", "rlgames/ConnectFour-v0", "--board-net", "cnn", "--action-planes", "one-hot"),
     "ConnectFour-v0's model sees a move as the cells it names"),
])  # fmt: skip
def test_image_only_settings_for_other_models_are_refused_with_one_line_and_exit_2(tmp_path, flags, refusal):
    result = _launch("train_muzero.py", "--total-timesteps", "100", *flags, "--runs-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert refusal in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # refused before the run folder was made


def test_a_replay_that_cannot_fit_is_refused_before_the_run(tmp_path):
    from training.muzero.config import ModelSpaces, check_replay_fits

    spaces = ModelSpaces((4, 84, 84), np.dtype(np.uint8), 6, False)
    # A uint8 frame stack plus policy and scalars; segments of 50 starts also keep 5 + 10 + 1 positions after them.
    per_position = math.ceil((4 * 84 * 84 + 8 * (6 + 4)) * (1 + 16 / 50))
    with pytest.raises(ConfigError, match=rf"--replay-capacity 1000000 positions of {per_position:,} bytes need .* use --replay-capacity \d+"):
        check_replay_fits(MuZeroConfig(replay_capacity=1_000_000), spaces, memory_bytes=24 * 2**30)
    check_replay_fits(MuZeroConfig(replay_capacity=100_000), spaces, memory_bytes=24 * 2**30)  # 3.5 GiB: fine
    with pytest.raises(ConfigError, match="--replay-capacity 400000 positions of 28,304 bytes"):  # whole games
        check_replay_fits(MuZeroConfig(replay_capacity=400_000, segment_length=0), spaces, memory_bytes=16 * 2**30)
    masked = ModelSpaces((4, 84, 84), np.dtype(np.uint8), 6, True)  # the legal moves stored too: 6 bytes more
    with pytest.raises(ConfigError, match="--replay-capacity 400000 positions of 28,310 bytes"):
        check_replay_fits(MuZeroConfig(replay_capacity=400_000, segment_length=0), masked, memory_bytes=16 * 2**30)


def test_resume_refuses_a_flag_that_would_change_the_run(short_run, capsys):
    from training.cli import run_cli

    sys.path.insert(0, str(ROOT / "launch"))
    import train_muzero

    _, run_dir = short_run
    code = run_cli(lambda: train_muzero.main(["--resume", str(run_dir), "--num-simulations", "50"]))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--num-simulations with --resume" in err, err


def test_the_dashboard_is_muzeros_and_charts_every_tag_it_logs(short_run):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    from training.muzero.train import MUZERO_DASHBOARD_LAYOUT

    _, run_dir = short_run
    layout = None
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "custom_scalars__config__":
                    layout = layout_pb2.Layout.FromString(value.tensor.string_val[0])
    assert layout is not None and [c.title for c in layout.category] == list(MUZERO_DASHBOARD_LAYOUT)
    patterns = [tag for c in layout.category for chart in c.chart for tag in chart.multiline.tag]
    assert not any("approx_kl" in p or "clipfrac" in p for p in patterns)  # PPO's charts are not MuZero's
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    uncharted = [t for t in acc.Tags()["scalars"] if not any(re.fullmatch(p, t) for p in patterns)]
    assert not uncharted, uncharted


@pytest.mark.parametrize("every", [1, 10**6])
def test_the_target_network_is_refreshed_every_n_updates(tmp_path, every):
    """--target-update-every 1: the target is the model after every step; a period longer than the run: it
    keeps the initial weights (built first after the run's torch seed)."""
    import torch

    from training.checkpoint import load_checkpoint
    from training.muzero.config import build_model

    cfg = MuZeroConfig(runs_dir=str(tmp_path), total_timesteps=160, warmup_steps=64, batch_size=16, num_envs=4,
                       num_simulations=2, target_update_every=every, eval_episodes=0, stop_when_solved=False,
                       progress=False)  # fmt: skip
    payload = load_checkpoint(train_muzero(cfg).checkpoint)
    assert payload["updates"] > 0
    torch.manual_seed(cfg.seed)
    expected = payload["model"] if every == 1 else build_model(cfg).state_dict()
    for name, value in payload["target_model"].items():
        assert torch.equal(value, expected[name].cpu()), name


def test_the_learning_rate_falls_linearly_to_its_final_fraction(tmp_path):
    """--final-lr-fraction 0.1 over 160 env steps: Adam's rate at the last round's updates (after 150 of
    the 160 steps, 10 a round) is 3e-3 x (1 - 0.9 x 150 / 160); each logged round's charts/learning_rate
    follows the same line."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.checkpoint import load_checkpoint

    cfg = MuZeroConfig(runs_dir=str(tmp_path), total_timesteps=160, warmup_steps=64, batch_size=16, num_envs=10,
                       num_simulations=2, final_lr_fraction=0.1, eval_episodes=0, stop_when_solved=False,
                       progress=False)  # fmt: skip
    result = train_muzero(cfg)
    (group,) = load_checkpoint(result.checkpoint)["optimizer"]["param_groups"]
    assert group["lr"] == pytest.approx(3e-3 * (1 - 0.9 * 150 / 160))
    acc = EventAccumulator(str(result.run_dir))
    acc.Reload()
    logged = acc.Scalars("charts/learning_rate")  # at the step each round ended; its rate from the step it began
    assert logged and all(e.value == pytest.approx(3e-3 * (1 - 0.9 * (e.step - 10) / 160)) for e in logged)


def test_minatar_gets_its_preset_and_flags_still_win():
    from training.muzero.config import parse_muzero_config

    cfg = parse_muzero_config(["--env-id", "MinAtar/Breakout-v0"])
    assert cfg.preset == "MinAtar/Breakout-v0"
    assert (cfg.res_channels, cfg.updates_per_step, cfg.learner_precision, cfg.total_timesteps) == (16, 0.125, "auto", 200_000)
    assert (cfg.action_planes, cfg.consistency_coef) == ("one-hot", 2.0)
    assert parse_muzero_config(["--env-id", "MinAtar/Breakout-v0", "--res-channels", "8"]).res_channels == 8
    cartpole = parse_muzero_config([])  # the field defaults with the value loss weighted 1 and 4 self-play games
    assert cartpole.preset == "CartPole-v1" and cartpole.value_loss_coef == 1.0 and cartpole.res_channels == 32
    assert cartpole.num_envs == 4 and parse_muzero_config(["--num-envs", "8"]).num_envs == 8
    assert parse_muzero_config(["--value-loss-coef", "0.25"]).value_loss_coef == 0.25  # a flag still wins
    default = parse_muzero_config(["--env-id", "Acrobot-v1"])  # no preset: the field defaults
    assert default.preset == "defaults" and default.value_loss_coef == 0.25 and default.updates_per_step == 1.0
    assert parse_muzero_config(["--preset", "defaults"]).value_loss_coef == 0.25
    assert parse_muzero_config(["--env-id", "MinAtar/Breakout-v0", "--preset", "defaults"]).res_channels == 32
    ttt = parse_muzero_config(["--env-id", "rlgames/TicTacToe-v0"])  # judged every 2,500 steps by 100 games
    assert (ttt.preset, ttt.total_timesteps, ttt.eval_every, ttt.eval_episodes) == ("rlgames/TicTacToe-v0", 100_000,
                                                                                   2_500, 100)  # fmt: skip
    c4 = parse_muzero_config(["--env-id", "rlgames/ConnectFour-v0"])  # outcome targets, the residual net on planes
    assert (c4.td_steps, c4.discount, c4.value_loss_coef, c4.board_net, c4.res_channels, c4.updates_per_step) == (
        42, 1.0, 1.0, "cnn", 16, 0.25)
    assert parse_muzero_config(["--env-id", "rlgames/ConnectFour-v0", "--board-net", "mlp"]).board_net == "mlp"
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of: auto, defaults, CartPole-v1, MinAtar/"):
        parse_muzero_config(["--preset", "nope"])


def test_minatar_grids_reach_the_net_as_they_are_and_atari_frames_as_fractions():
    from training.muzero.config import build_model, model_spaces

    minatar = model_spaces("MinAtar/Breakout-v0")
    assert minatar.obs_dtype == np.uint8 and not minatar.pixels  # 0/1 cells: dividing by 255 would hide them
    assert not build_model(MuZeroConfig(env_id="MinAtar/Breakout-v0")).pixels
    assert model_spaces("ALE/Breakout-v5").pixels  # 0-255 intensities


def test_the_residual_nets_updates_take_the_cores_and_its_search_one_thread(tmp_path, monkeypatch):
    from training.muzero import actor, config, self_play
    from training.muzero import train as muzero_train

    monkeypatch.setattr(config, "usable_cores", lambda: 4)
    board = MuZeroConfig(env_id="rlgames/ConnectFour-v0", board_net="cnn")
    assert config.learner_threads(board, residual=True) == 4
    assert config.learner_threads(MuZeroConfig(), residual=False) == 1  # the MLPs, as measured
    assert config.learner_threads(dataclasses.replace(board, torch_threads=3), residual=True) == 3

    # A real run with --torch-threads 2: every update on 2 threads, every search (self-play, evaluation) on 1.
    seen = {"update": set(), "search": set()}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            seen[name].add(torch.get_num_threads())
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(muzero_train, "update", counted("update", muzero_train.update))
    monkeypatch.setattr(self_play, "run_policy_over_symmetries", counted("search", self_play.run_policy_over_symmetries))
    monkeypatch.setattr(actor, "run_policy_over_symmetries", counted("search", actor.run_policy_over_symmetries))
    before = torch.get_num_threads()
    try:
        cfg = dataclasses.replace(board, total_timesteps=120, warmup_steps=40, batch_size=8, num_simulations=4,
                                  eval_every=60, eval_episodes=2, res_channels=4, torch_threads=2,
                                  runs_dir=str(tmp_path), progress=False)  # fmt: skip
        result = train_muzero(cfg)
    finally:
        torch.set_num_threads(before)
    assert result.global_step == 120 and seen == {"update": {2}, "search": {1}}
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["resolved_torch_threads"] == 2
