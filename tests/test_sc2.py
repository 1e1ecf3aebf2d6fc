"""StarCraft II without the game: the adapter over pysc2's mock, real observations from pysc2's test
helpers validated by pysc2's own Features.transform_action, the FullyConv agent and its action
distribution, and the whole PPO loop on sc2-mock/<map>."""

import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from agents.sc2_networks import FunctionCallDistribution
from envs import probe_spaces
from envs.factory import check_env_id, make_env
from envs.sc2 import ARGUMENT_TYPES, SC2Interface, SC2NotFoundError, SC2Options, StarCraft2Env
from envs.sc2_compat import import_pysc2
from training.ppo.config import PPOConfig, env_kwargs
from training.ppo.rollout import RolloutWorker, allocate_rollout_arrays
from training.ppo.train import PPOLearner, build_agent

ROOT = Path(__file__).resolve().parents[1]
SMALL = SC2Options(screen_size=16, minimap_size=16)


def _cfg(tmp_path, **kw) -> PPOConfig:
    base = dict(env_id="sc2-mock/MoveToBeacon", preset="cleanrl", num_envs=2, num_steps=32, num_minibatches=2,
                update_epochs=2, backend="inprocess", eval_episodes=0, progress=False, runs_dir=str(tmp_path), sc2=SMALL)  # fmt: skip
    return PPOConfig(**{**base, **kw})


# --- the adapter over pysc2's mock -------------------------------------------------------------------


def test_every_mini_game_and_melee_map_has_an_id():
    for name in ("MoveToBeacon", "CollectMineralShards", "FindAndDefeatZerglings", "DefeatRoaches",
                 "DefeatZerglingsAndBanelings", "CollectMineralsAndGas", "BuildMarines", "Simple64"):  # fmt: skip
        assert f"sc2/{name}" in gym.registry and f"sc2-mock/{name}" in gym.registry


def test_gymnasium_env_checker_passes_on_the_adapter():
    env = make_env("sc2-mock/MoveToBeacon", 0, env_kwargs={"options": SMALL})()
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_observations_match_pysc2s_specs():
    sc = import_pysc2()
    env = StarCraft2Env("MoveToBeacon", mock=True, options=SMALL)
    obs, _ = env.reset(seed=0)
    spec = env._env.observation_spec()[0]
    assert spec["feature_screen"] == (len(sc.features.SCREEN_FEATURES), 16, 16)
    assert obs["screen"].shape == (len(SMALL.screen_features), 16, 16)
    assert obs["minimap"].shape == (len(SMALL.minimap_features), 16, 16)
    assert obs["player"].shape == spec["player"]
    assert obs["available_actions"].shape == (len(sc.actions.FUNCTIONS),)
    assert env.observation_space.contains(obs)
    # The mock offers pysc2's 9 always-available general functions; the mask says exactly those.
    assert set(np.flatnonzero(obs["available_actions"])) == {int(i) for i in env._last_obs["available_actions"]}
    for _ in range(10):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert terminated and not truncated  # the mock's 10-step episodes end with discount 0: a real end
    env.close()


def test_melee_maps_get_the_bot_with_its_race_and_difficulty():
    sc = import_pysc2()
    options = SC2Options(screen_size=16, minimap_size=16, race="zerg", bot_race="protoss", difficulty="hard")
    env = StarCraft2Env("Simple64", mock=True, options=options, replay_dir="/tmp/r", save_replay_episodes=2)
    seen = env.game_kwargs(seed=5)
    agent, bot = seen["players"]
    assert agent.race == [sc.sc2_env.Race.zerg]
    assert bot.race == [sc.sc2_env.Race.protoss] and bot.difficulty == sc.sc2_env.Difficulty.hard
    assert seen["realtime"] is False and seen["random_seed"] == 5 and seen["step_mul"] == 8
    assert seen["save_replay_episodes"] == 2 and seen["replay_dir"] == "/tmp/r"
    assert len(StarCraft2Env("MoveToBeacon", mock=True, options=options).game_kwargs(None)["players"]) == 1
    env.reset(seed=5)  # the mock accepts the two-player setup
    env.close()


def test_function_subset_and_point_conversion():
    interface = SC2Interface(SC2Options(screen_size=16, minimap_size=8, functions=("select_army", "Move_screen")))
    assert [f.name for f in interface.functions] == ["no_op", "select_army", "Move_screen"]
    assert interface.action_space.nvec[0] == 3
    move = 2
    assert interface.uses[move].tolist() == [name in ("queued", "screen") for name in ARGUMENT_TYPES]
    action = np.zeros(1 + len(ARGUMENT_TYPES), dtype=np.int64)
    action[0], action[1 + ARGUMENT_TYPES.index("screen")], action[1 + ARGUMENT_TYPES.index("queued")] = move, 3 * 16 + 5, 1
    call = interface.function_call(action)
    # Flat index y * size + x  ->  pysc2's (x, y)
    assert int(call.function) == 331 and call.arguments == [[1], [5, 3]]
    action[1 + ARGUMENT_TYPES.index("screen")] = 16 * 16 + 40  # out of range: clipped to the last cell
    assert interface.function_call(action).arguments[1] == [15, 15]
    unavailable = np.array([1, 1, 0], dtype=np.int8)
    assert int(interface.function_call(action, unavailable).function) == 0  # no_op


def test_bad_layer_or_function_names_say_what_exists():
    from envs.sc2 import SC2OptionsError

    with pytest.raises(SC2OptionsError, match="did you mean.*player_relative"):
        SC2Interface(SC2Options(screen_features=("player_relativ",)))
    with pytest.raises(SC2OptionsError, match="Move_screen"):
        SC2Interface(SC2Options(functions=("Move_scren",)))


# --- real observations from pysc2's test helpers, validated by pysc2 ---------------------------------


def _real_observation(sc, size: int):
    """A ResponseObservation built with pysc2.tests.dummy_observation, with a selected marine and the
    Move/Attack/Stop abilities available, and the Features that parse and validate it."""
    from pysc2.lib import units
    from pysc2.tests import dummy_observation

    feats = sc.features.Features(
        sc.features.AgentInterfaceFormat(feature_dimensions=sc.features.Dimensions(screen=size, minimap=size)),
        map_size=sc.point.Point(64, 64),
    )
    builder = dummy_observation.Builder(feats.observation_spec())
    marine = dummy_observation.Unit(units.Terran.Marine, sc.features.PlayerRelative.SELF, 45)
    builder.single_select(marine)
    response = builder.build()
    for ability_id, requires_point in ((16, True), (23, True), (4, False), (3674, True)):  # Move, Attack, Stop
        response.observation.abilities.add(ability_id=ability_id, requires_point=requires_point)
    return feats, response


def test_sampled_actions_are_available_and_pysc2_accepts_them():
    sc = import_pysc2()
    options = SC2Options(screen_size=16, minimap_size=16)
    interface = SC2Interface(options)
    feats, response = _real_observation(sc, 16)
    observation = response.observation
    agent_obs = feats.transform_obs(response)
    obs = interface.observation(agent_obs)
    assert interface.observation_space.contains(obs)
    available_ids = set(int(i) for i in feats.available_actions(observation))
    assert {int(interface.function_ids[i]) for i in np.flatnonzero(obs["available_actions"])} == available_ids
    assert len(available_ids) > 9  # the selected marine adds unit commands to the general functions

    cfg = PPOConfig(env_id="sc2-mock/MoveToBeacon", sc2=options)
    agent = build_agent(cfg, interface.observation_space, interface.action_space)
    batch = {k: torch.as_tensor(v).unsqueeze(0).expand(512, *v.shape) for k, v in obs.items()}
    actions = agent.act(batch, torch.Generator().manual_seed(0)).action
    assert len(set(actions[:, 0].tolist())) > 5  # the near-uniform initial policy explores many functions
    for action in actions.numpy():
        assert obs["available_actions"][action[0]] == 1
        call = interface.function_call(action)  # no mask: an unavailable function would reach pysc2 and fail
        feats.transform_action(observation, call)  # raises ValueError on anything invalid


# --- the action distribution ---------------------------------------------------------------------


def _small_distribution():
    # 3 functions, 2 argument types: f0 takes none, f1 takes arg 0, f2 takes both.
    uses = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    function_logits = torch.tensor([[0.2, -0.5, 1.0]])
    argument_logits = [torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.3, -0.3]])]
    return FunctionCallDistribution(function_logits, argument_logits, uses, torch.ones(1, 3, dtype=torch.bool))


def test_log_prob_counts_only_the_arguments_the_function_takes():
    d = _small_distribution()
    p_f = torch.softmax(torch.tensor([0.2, -0.5, 1.0]), 0)
    p_a = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    p_b = torch.softmax(torch.tensor([0.3, -0.3]), 0)
    # f0 ignores both arguments, whatever they hold
    for action, expected in (
        ([0, 2, 1], p_f[0]),
        ([0, 0, 0], p_f[0]),
        ([1, 2, 1], p_f[1] * p_a[2]),
        ([1, 2, 0], p_f[1] * p_a[2]),
        ([2, 1, 0], p_f[2] * p_a[1] * p_b[0]),
    ):
        assert d.log_prob(torch.tensor([action])).item() == pytest.approx(math.log(expected.item()), abs=1e-6)


def test_entropy_is_the_joint_entropy_over_what_the_functions_take():
    d = _small_distribution()
    joint = []  # every distinct action, with its probability
    for f, args in ((0, [()]), (1, [(a,) for a in range(3)]), (2, [(a, b) for a in range(3) for b in range(2)])):
        for values in args:
            action = [f, *values, *([0] * (2 - len(values)))]
            joint.append(d.log_prob(torch.tensor([action])).exp().item())
    assert sum(joint) == pytest.approx(1.0, abs=1e-6)
    exact = -sum(p * math.log(p) for p in joint)
    assert d.entropy().item() == pytest.approx(exact, abs=1e-5)


def test_an_argument_no_function_takes_can_be_left_out_exactly():
    """FullyConv computes no head for an argument outside the chosen functions: None in its place gives the
    same log-probabilities and entropy as any logits there (the uses mask zeroes them), and holds 0."""
    uses = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    f_logits, a_logits = torch.tensor([[0.2, -0.5, 1.0]]), torch.tensor([[0.0, 1.0, 2.0]])
    available = torch.ones(1, 3, dtype=torch.bool)
    full = FunctionCallDistribution(f_logits, [a_logits, torch.tensor([[3.0, -1.0]])], uses, available)
    lean = FunctionCallDistribution(f_logits, [a_logits, None], uses, available)
    for action in ([0, 0, 0], [1, 2, 0], [2, 1, 0]):
        assert lean.log_prob(torch.tensor([action])).item() == pytest.approx(full.log_prob(torch.tensor([action])).item())
    assert lean.entropy().item() == pytest.approx(full.entropy().item())
    assert lean.sample(torch.Generator().manual_seed(0))[0, 2].item() == 0 and lean.mode()[0, 2].item() == 0


def test_unavailable_functions_are_never_sampled():
    uses = torch.zeros(4, 1)
    logits = torch.tensor([[5.0, 0.0, 5.0, 0.0]]).repeat(2000, 1)
    available = torch.tensor([[False, True, False, True]]).repeat(2000, 1)
    d = FunctionCallDistribution(logits, [torch.zeros(2000, 3)], uses, available)
    functions = d.sample(torch.Generator().manual_seed(0))[:, 0]
    assert set(functions.tolist()) == {1, 3}
    assert d.mode()[:, 0].tolist() == [1] * 2000
    assert torch.isfinite(d.entropy()).all()


# --- PPO on the mock ----------------------------------------------------------------------------------


def test_a_ppo_update_runs_on_a_mock_rollout(tmp_path):
    cfg = _cfg(tmp_path)
    obs_space, act_space = probe_spaces(cfg.env_id, env_kwargs(cfg))
    learner = PPOLearner(build_agent(cfg, obs_space, act_space), cfg, torch.device("cpu"))
    arrays = allocate_rollout_arrays(obs_space, act_space, cfg.num_steps, cfg.num_envs)
    worker = RolloutWorker(cfg.env_id, cfg.num_envs, 0, learner.agent, arrays, env_kwargs(cfg))
    stats = worker.collect()
    worker.close()
    assert len(stats.episode_returns) == 2 * (32 // 10)  # 10-step mock episodes
    from training.ppo.rollout import Rollout

    rollout = Rollout.from_arrays(arrays, 0, [stats])
    available = rollout.obs["available_actions"].reshape(-1, act_space.nvec[0])
    assert available[np.arange(available.shape[0]), rollout.actions.reshape(-1, 14)[:, 0]].all()
    before = {k: v.clone() for k, v in learner.agent.state_dict().items()}
    result = learner.update(rollout, 1e-3)
    assert result is not None and all(np.isfinite(v) for v in result.values())
    assert any(not torch.equal(before[k], v) for k, v in learner.agent.state_dict().items())


class _CrashingGame(StarCraft2Env):
    """The mock whose first game dies on the 5th agent step, raising from inside pysc2's env as a lost
    websocket would."""

    launches = 0

    def _start(self, seed):
        type(self).launches += 1
        return super()._start(seed)

    def step(self, action):
        self.steps = getattr(self, "steps", 0) + 1
        if type(self).launches == 1 and self.steps == 5:
            def dead(actions, step_mul=None):
                raise ConnectionError("Websocket timed out")  # what pysc2's protocol raises

            self._env.step = dead
        return super().step(action)


def test_a_game_crash_inside_a_worker_is_survived(tmp_path):
    gym.register("tests/CrashingSC2-v0", entry_point=_CrashingGame, kwargs={"map_name": "MoveToBeacon", "mock": True})
    try:
        cfg = _cfg(tmp_path, env_id="tests/CrashingSC2-v0")
        kwargs = {"options": SMALL}
        obs_space, act_space = probe_spaces(cfg.env_id, kwargs)
        agent = build_agent(_cfg(tmp_path), obs_space, act_space)
        arrays = allocate_rollout_arrays(obs_space, act_space, 32, 1)
        worker = RolloutWorker(cfg.env_id, 1, 0, agent, arrays, kwargs)
        stats = worker.collect()
        worker.close()
    finally:
        gym.registry.pop("tests/CrashingSC2-v0")
    assert stats.env_restarts == 1 and stats.dropped_episodes == 1
    assert _CrashingGame.launches == 2  # a new game was started
    # The interrupted episode is cut as truncated at the step before the crash, then play goes on.
    assert arrays["truncated"][3, 0] == 1 and arrays["terminated"][:4, 0].sum() == 0
    assert len(stats.episode_returns) == (32 - 4) // 10


def test_save_replay_every_sends_replays_to_the_run_folder(tmp_path):
    cfg = _cfg(tmp_path, save_replay_every=5)
    kwargs = env_kwargs(cfg, tmp_path / "run")
    assert kwargs["save_replay_episodes"] == 5 and kwargs["replay_dir"] == str((tmp_path / "run" / "replays").resolve())
    assert env_kwargs(PPOConfig(env_id="CartPole-v1")) == {}


# --- without the game ---------------------------------------------------------------------------------


def test_missing_game_names_sc2path_the_client_and_the_maps_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(SC2NotFoundError, match=r"SC2PATH=.*Linux client 4\.10.*Maps.*sc2-mock/MoveToBeacon"):
        check_env_id("sc2/MoveToBeacon")
    binary = tmp_path / "Versions" / "Base75689" / "SC2_x64"
    binary.parent.mkdir(parents=True)
    binary.touch()
    with pytest.raises(SC2NotFoundError, match=r"map MoveToBeacon not found at .*Maps/mini_games/MoveToBeacon\.SC2Map"):
        check_env_id("sc2/MoveToBeacon")
    (tmp_path / "Maps" / "mini_games").mkdir(parents=True)
    (tmp_path / "Maps" / "mini_games" / "MoveToBeacon.SC2Map").touch()
    check_env_id("sc2/MoveToBeacon")


def test_train_command_without_the_game_exits_2_with_one_line(tmp_path):
    env = {"SC2PATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "launch/train_ppo.py", "--env-id", "sc2/DefeatRoaches"], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "SC2PATH" in proc.stderr and "sc2-mock/DefeatRoaches" in proc.stderr


def test_compat_module_works_in_the_same_process_as_tensorboard(tmp_path):
    # A fresh process: tensorboard's SummaryWriter imports protobuf (C/upb backend) first, then pysc2's
    # generated modules load through the compatibility hook, and the writer still works afterwards.
    script = f"""
from torch.utils.tensorboard import SummaryWriter
w = SummaryWriter({str(tmp_path)!r})
w.add_scalar("a", 1.0, 0)
from envs.sc2_compat import import_pysc2
sc = import_pysc2()
from google.protobuf.internal import api_implementation
from envs.factory import make_env
env = make_env("sc2-mock/CollectMineralShards", 0)()
obs, _ = env.reset(seed=0)
obs, *_ = env.step(env.action_space.sample())
env.close()
from s2clientprotocol import sc2api_pb2
request = sc2api_pb2.Request(ping=sc2api_pb2.RequestPing())
assert sc2api_pb2.Request.FromString(request.SerializeToString()).HasField("ping")
w.add_scalar("a", 2.0, 1)
w.close()
print(api_implementation.Type())
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != "python"  # the fast protobuf backend is kept
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.value for e in acc.Scalars("a")] == [1.0, 2.0]


def test_palette_fix_reproduces_pysc2s_fixed_shuffle():
    import random

    import_pysc2()
    from pysc2.lib import colors

    state = random.getstate()
    palette = colors.shuffled_hue(10)
    assert random.getstate() == state  # no global random state consumed
    expected = list(colors.smooth_hue_palette(10))
    for i in reversed(range(1, 10)):  # Python < 3.11's random.shuffle(x, lambda: 0.5)
        j = int(0.5 * (i + 1))
        expected[i], expected[j] = expected[j], expected[i]
    np.testing.assert_array_equal(palette, np.array(expected))


# --- the real commands, end to end on the mock --------------------------------------------------------


@pytest.mark.parametrize(("env_id", "extra", "watch_says", "evaluate_says"), [
    # pysc2's mock: 10-step games, reward 0, and the note that the mock has no replays. Slow (~20 s): the
    # simulator's run below goes through the same adapter and commands; this file's other tests cover the mock.
    pytest.param("sc2-mock/MoveToBeacon", ["--backend", "multiprocess", "--num-workers", "2", "--sc2.screen-size",
                                           "16", "--sc2.minimap-size", "16"], ("episode 1: return 0.00, length 10", "mock"),
                 "greedy: mean return 0.00", marks=pytest.mark.slow),
    # the simulator with its preset, 160 game loops a game (20 agent steps) so that it stays short
    ("sc2-sim/MoveToBeacon", ["--sc2.game-steps-per-episode", "160"], ("episode 1: return", "length 20"),
     "greedy: mean return"),
])  # fmt: skip
def test_train_watch_and_evaluate_commands(tmp_path, env_id, extra, watch_says, evaluate_says):
    args = ["--env-id", env_id, "--total-timesteps", "256", "--num-envs", "2", "--num-steps", "64",
            "--eval-episodes", "2", "--runs-dir", str(tmp_path), "--no-progress", *extra]  # fmt: skip
    proc = subprocess.run([sys.executable, "launch/train_ppo.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"finished {env_id} after 256 env steps" in proc.stdout
    (run_dir,) = tmp_path.iterdir()
    watch = subprocess.run([sys.executable, "launch/watch.py", str(run_dir), "--episodes", "1", "--no-window"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert watch.returncode == 0, watch.stderr
    assert all(text in watch.stdout for text in watch_says), watch.stdout
    assert len(list((run_dir / "videos").glob("*.mp4"))) == 1
    evaluate = subprocess.run([sys.executable, "launch/evaluate.py", str(run_dir), "--episodes", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert evaluate.returncode == 0 and evaluate_says in evaluate.stdout


def test_fullyconv_with_memory_reproduces_its_function_calls_and_updates(tmp_path):
    """--policy-memory lstm on the FullyConv agent: the LSTM after its fully connected layer carries the
    state through the mock's episodes; the update recomputes the function-call log-probabilities."""
    from training.ppo.rollout import Rollout

    cfg = _cfg(tmp_path, policy_memory="lstm", lstm_size=16)
    obs_space, act_space = probe_spaces(cfg.env_id, env_kwargs(cfg))
    learner = PPOLearner(build_agent(cfg, obs_space, act_space), cfg, torch.device("cpu"))
    agent = learner.agent
    assert agent.memory_size == 32
    arrays = allocate_rollout_arrays(obs_space, act_space, cfg.num_steps, cfg.num_envs, memory_size=agent.memory_size)
    worker = RolloutWorker(cfg.env_id, cfg.num_envs, 0, agent, arrays, env_kwargs(cfg))
    worker.collect()
    rollout = Rollout.from_arrays(arrays, 0, [worker.collect()])  # the second: it starts from a carried state
    worker.close()
    assert np.abs(rollout.memory).max() > 0
    np.testing.assert_array_equal(rollout.episode_starts[1:], (rollout.terminated + rollout.truncated)[:-1])
    steps, n = rollout.rewards.shape
    obs = {k: torch.as_tensor(v.reshape(steps * n, *v.shape[2:])) for k, v in rollout.obs.items()}
    with torch.no_grad():
        dist, _, _ = agent(obs, torch.as_tensor(rollout.memory), torch.as_tensor(rollout.episode_starts.reshape(-1)))
        log_probs = dist.log_prob(torch.as_tensor(rollout.actions.reshape(steps * n, -1)))
    np.testing.assert_allclose(log_probs.numpy(), rollout.log_probs.reshape(-1), rtol=0, atol=1e-5)
    result = learner.update(rollout, 1e-3)
    assert result is not None and all(np.isfinite(v) for v in result.values())
