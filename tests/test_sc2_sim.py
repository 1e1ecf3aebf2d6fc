"""The simulated StarCraft II mini-games (envs.sc2_sim) under the real adapter: spaces, pysc2's own action
checks, hand-computed dynamics (beacon, shards, a roach fight), the selection model, and the calibration
against the SC2LE paper's reference players."""

import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from envs.factory import EnvSpecError, check_env_id, make_env
from envs.sc2 import SIM_MAPS, SC2Options, StarCraft2Env
from envs.sc2_compat import import_pysc2
from envs.sc2_sim import MARINE, ROACH, Order, SimulatedSC2Env
from training.ppo.config import PPOConfig, apply_preset
from training.ppo.train import build_agent

S = 16  # screen pixels; the camera is 24 world units wide, so 1.5 world units per pixel
OPTIONS = SC2Options(screen_size=S, minimap_size=8)


def _env(map_name: str, options: SC2Options = OPTIONS, seed: int = 0) -> StarCraft2Env:
    env = gym.make(f"sc2-sim/{map_name}", options=options).unwrapped
    env.reset(seed=seed)
    return env


def _action(env: StarCraft2Env, name: str, **arguments) -> np.ndarray:
    """An action vector for function `name`; point arguments given as (x, y) screen pixels."""
    action = np.zeros(env.action_space.shape, dtype=np.int64)
    action[0] = [f.name for f in env.interface.functions].index(name)
    types = [a.name for a in env.interface.sc.actions.TYPES]
    for key, value in arguments.items():
        action[1 + types.index(key)] = value[1] * S + value[0] if isinstance(value, tuple) else value
    return action


def _pixel_centre(px: int, py: int) -> tuple[float, float]:
    """World coordinates of a screen pixel's centre with the camera at its start (centred on (32, 32))."""
    return 32 + (px + 0.5 - S / 2) * 1.5, 32 - (py + 0.5 - S / 2) * 1.5


@pytest.mark.parametrize("map_name", SIM_MAPS)
def test_gymnasium_env_checker_passes(map_name):
    env = make_env(f"sc2-sim/{map_name}", 0, env_kwargs={"options": OPTIONS})()
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("options", [OPTIONS, SC2Options(screen_features=("all",), minimap_features=("all",))])
def test_spaces_are_the_real_adapters_and_observations_lie_in_them(options):
    real = StarCraft2Env("MoveToBeacon", mock=True, options=options)  # the sc2/ adapter's interface, no game
    for map_name in SIM_MAPS:
        env = StarCraft2Env(map_name, simulated=True, options=options)
        assert env.observation_space == real.observation_space and env.action_space == real.action_space
        obs, _ = env.reset(seed=1)
        for _ in range(5):
            assert env.observation_space.contains(obs)
            obs, *_ = env.step(env.action_space.sample())


def test_an_unknown_simulated_map_names_the_ones_there_are():
    with pytest.raises(EnvSpecError) as error:
        check_env_id("sc2-sim/FindAndDefeatZerglings")
    for name in SIM_MAPS:
        assert f"sc2-sim/{name}" in str(error.value)


@pytest.mark.parametrize("map_name", SIM_MAPS)
def test_actions_of_an_untrained_agent_pass_pysc2s_transform_action(map_name):
    """The simulator sends every call through pysc2's Features.transform_action, which raises on an
    unavailable function or a bad argument; 200 steps of an untrained FullyConv over all functions."""
    cfg = apply_preset(PPOConfig(env_id=f"sc2-sim/{map_name}"))
    cfg = PPOConfig(**{**cfg.__dict__, "sc2": SC2Options(screen_size=S, minimap_size=8, functions=())})
    env = StarCraft2Env(map_name, simulated=True, options=cfg.sc2)
    agent = build_agent(cfg, env.observation_space, env.action_space)
    obs, _ = env.reset(seed=2)
    torch.manual_seed(0)
    for _ in range(200):
        batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
        with torch.no_grad():
            dist, _, _ = agent(batch)
        obs, _, terminated, truncated, info = env.step(dist.sample()[0].numpy())
        assert info["unavailable_actions"] == 0
        if terminated or truncated:
            obs, _ = env.reset()


def test_pysc2_refuses_a_command_without_a_selection():
    sc = import_pysc2()
    aif = sc.sc2_env.AgentInterfaceFormat(feature_dimensions=sc.sc2_env.Dimensions(screen=S, minimap=8))
    sim = SimulatedSC2Env(map_name="MoveToBeacon", agent_interface_format=aif, random_seed=0)
    (timestep,) = sim.reset()
    functions = sc.actions.FUNCTIONS
    assert functions.Move_screen.id not in timestep.observation["available_actions"]
    with pytest.raises(ValueError, match="not available"):
        sim.step([functions.Move_screen("now", [3, 3])])
    (timestep,) = sim.step([functions.select_army("select")])
    assert functions.Move_screen.id in timestep.observation["available_actions"]


def test_the_marine_reaches_the_beacon_after_the_computed_number_of_steps():
    env = _env("MoveToBeacon")
    game = env._env.game
    game.beacon.x, game.beacon.y = _pixel_centre(12, 8)
    game.marine.x, game.marine.y = game.beacon.x - 10.0, game.beacon.y
    env.step(_action(env, "select_army"))
    # Touching (centre distance <= 0.375 + 1) after 10 - 1.375 = 8.625 units at 0.140625 per game loop:
    # loop 62 (ceil(61.33)), i.e. the 8th agent step of 8 loops.
    expected_step = math.ceil(math.ceil((10.0 - MARINE.radius - 1.0) / MARINE.speed) / 8)
    assert expected_step == 8
    rewards = [env.step(_action(env, "Move_screen", screen=(12, 8)))[1]]
    rewards += [env.step(_action(env, "no_op"))[1] for _ in range(9)]
    assert rewards == [0.0] * 7 + [1.0] + [0.0] * 2
    beacon = env._env.game.beacon
    assert math.hypot(beacon.x - game.marine.x, beacon.y - game.marine.y) >= 5.0  # respawned away


def test_a_shard_is_collected_once_and_a_new_set_comes_after_twenty():
    env = _env("CollectMineralShards")
    game = env._env.game
    shards = [u for u in game.units if u.kind.type_id == 1680]
    assert len(shards) == 20
    marine_a, marine_b = game.own()
    for i, shard in enumerate(shards):  # a grid 3 apart at the top: touching one touches no other
        shard.x, shard.y = game.left + 1 + 3 * (i % 7), game.top - 1 - 3 * (i // 7)
    marine_a.x, marine_a.y = shards[0].x, shards[0].y
    marine_b.x, marine_b.y = game.left + 1, game.bottom + 1
    first = env.step(_action(env, "no_op"))
    assert first[1] == 1.0  # the shard under the marine
    assert sum(env.step(_action(env, "no_op"))[1] for _ in range(5)) == 0.0  # never twice
    screen = first[0]["screen"][0]
    assert (screen == 3).any()  # the other 19 are still drawn (player_relative 3: neutral)
    for shard in shards[1:19]:  # 18 more taken: 19 of 20
        shard.alive = False
    marine_a.x, marine_a.y = shards[19].x, shards[19].y
    assert env.step(_action(env, "no_op"))[1] == 1.0
    fresh = [u for u in game.units if u.kind.type_id == 1680 and u.alive]
    assert len(fresh) == 20
    assert all(math.hypot(s.x - m.x, s.y - m.y) >= 2.0 for s in fresh for m in game.own())


def _one_on_one(env: StarCraft2Env, marines: int):
    """`marines` marines in weapon range of one roach; the other roaches far out of the way."""
    game = env._env.game
    roaches = [u for u in game.units if u.kind is ROACH]
    for extra in roaches[1:]:
        extra.x, extra.y = game.right - 0.7, game.top - 0.7
    roach = roaches[0]
    roach.x, roach.y = 32.0, 32.0
    own = game.own()
    for marine in own[marines:]:
        marine.alive = False
    for i, marine in enumerate(own[:marines]):  # centre distance 4.5: in range of both (gap 3.5 <= 4)
        angle = math.pi + (i - (marines - 1) / 2) * 0.2  # on an arc 0.9 apart: no two touch (0.75)
        marine.x, marine.y = 32.0 + 4.5 * math.cos(angle), 32.0 + 4.5 * math.sin(angle)
    env._env.selection = []
    return roach, own[:marines]


def test_nine_marines_kill_a_roach_in_the_computed_time():
    """9 marines x (6 - 1 armour) = 45 per volley; 145 hit points take 4 volleys, at game loops 1, 15, 29
    and 43 (a cooldown of 0.61 s x 22.4 = 13.66 loops: the next shot 14 loops later): agent step 6. The
    roach fires at loops 1 and 33 (32-loop cooldown), 16 damage each, at one marine: nobody dies."""
    env = _env("DefeatRoaches")
    roach, marines = _one_on_one(env, 9)
    rewards = [env.step(_action(env, "no_op"))[1] for _ in range(6)]
    assert rewards == [0.0] * 5 + [10.0]
    assert sorted(m.hp for m in marines)[:2] == [MARINE.hit_points - 32, MARINE.hit_points]


def test_a_lone_marine_dies_to_a_roach_in_the_computed_time_and_the_game_ends():
    """Roach shots at loops 1, 33, 65 (16 each; 45 hit points): the marine dies at loop 65, agent step 9,
    -1, and with no marine left the game ends (discount 0: terminated). The marine's 5 shots (loops 1, 15,
    29, 43, 57) leave the roach at 145 - 25."""
    env = _env("DefeatRoaches")
    roach, _ = _one_on_one(env, 1)
    results = [env.step(_action(env, "no_op")) for _ in range(9)]
    assert [r[1] for r in results] == [0.0] * 8 + [-1.0]
    assert [r[2] for r in results] == [False] * 8 + [True]
    assert roach.hp == ROACH.hit_points - 25


def test_an_idle_roach_goes_for_a_marine_in_sight_and_calls_the_roaches_near_it_when_shot():
    """A held marine 8 from roach r1 (gap 7: in r1's sight, 9, out of both ranges). r1 walks 0.140625 a
    loop towards it: 1.125 after an agent step. The marine (acting first in each loop) fires once the gap
    is <= 5, i.e. after r1's 15th loop (8 - 15 x 0.140625 = 5.89 apart): at loop 16, 5 damage. Then r2,
    idle, 11.65 from the marine but within 9 of r1, answers the call (and walks that same loop); r3, out
    of everyone's sight, stays as it was."""
    env = _env("DefeatRoaches")
    game = env._env.game
    marine = game.own()[0]
    r1, r2, r3 = [u for u in game.units if u.kind is ROACH][:3]
    game.units = [marine, r1, r2, r3]
    env._env.selection = []
    (marine.x, marine.y), (r1.x, r1.y), (r2.x, r2.y), (r3.x, r3.y) = (24.0, 32.0), (32.0, 32.0), (36.0, 36.0), (40.0, 24.0)
    marine.orders = [Order("hold")]
    env.step(_action(env, "no_op"))
    assert (r1.x, r1.y, r1.target) == (32.0 - 8 * 0.140625, 32.0, marine)
    assert (r2.x, r2.y, r2.orders, r3.orders, r1.hp) == (36.0, 36.0, [], [], ROACH.hit_points)
    env.step(_action(env, "no_op"))
    assert r1.hp == ROACH.hit_points - 5 and marine.hp == MARINE.hit_points
    assert [(o.kind, o.target) for o in r2.orders] == [("attack_unit", marine)]
    assert math.hypot(r2.x - 36.0, r2.y - 36.0) == pytest.approx(ROACH.speed)
    assert (r3.x, r3.y, r3.orders, r3.target) == (40.0, 24.0, [], None)


def test_units_take_room_and_keep_their_target_while_it_lives():
    """Two marines on one point stand 0.75 apart (two radii) after one loop; sent to one point, they end
    side by side, not on top of each other. A roach keeps the marine it acquired though another comes
    nearer."""
    env = _env("CollectMineralShards")
    game = env._env.game
    a, b = game.own()
    game.units = [a, b]
    a.x, a.y = b.x, b.y = 30.0, 32.0
    game.loop()
    assert math.hypot(a.x - b.x, a.y - b.y) == pytest.approx(2 * MARINE.radius)
    a.orders, b.orders = [Order("move", (36.0, 33.0))], [Order("move", (36.0, 33.0))]
    for _ in range(100):
        game.loop()
    assert math.hypot(a.x - b.x, a.y - b.y) >= 2 * MARINE.radius - 1e-9
    assert max(math.hypot(u.x - 36.0, u.y - 33.0) for u in (a, b)) <= 2 * MARINE.radius
    env = _env("DefeatRoaches")
    game = env._env.game
    first, second = game.own()[:2]
    roach = next(u for u in game.units if u.kind is ROACH)
    game.units = [first, second, roach]
    # the first out of its own range (gap 6 > 5) and held, so that nobody shoots and calls for help
    (roach.x, roach.y), (first.x, first.y), (second.x, second.y) = (32.0, 32.0), (25.0, 32.0), (24.0, 24.0)
    first.orders = [Order("hold")]
    game.loop()
    assert (roach.target, roach.orders) == (first, [])
    second.x, second.y = 30.0, 33.0  # nearer than the first now, walking (so not shooting) elsewhere
    second.orders = [Order("move", (40.0, 40.0))]
    game.loop()
    assert roach.target is first


def test_selection_model_points_rectangles_army_and_control_groups():
    env = _env("CollectMineralShards")
    game = env._env.game
    a, b = game.own()
    a.x, a.y = _pixel_centre(3, 8)
    b.x, b.y = _pixel_centre(12, 8)
    assert not env.step(_action(env, "no_op"))[0]["available_actions"][env.interface._index_of_id[331]]
    env.step(_action(env, "select_point", select_point_act=0, screen=(3, 8)))
    assert env._env.selection == [a]
    env.step(_action(env, "select_point", select_point_act=1, screen=(12, 8)))  # toggle: add b
    assert env._env.selection == [a, b]
    env.step(_action(env, "select_control_group", control_group_act=1, control_group_id=4))  # set group 4
    env.step(_action(env, "select_point", select_point_act=0, screen=(8, 1)))  # the ground: nothing
    assert env._env.selection == []
    env.step(_action(env, "select_rect", select_add=0, screen=(10, 6), screen2=(14, 10)))
    assert env._env.selection == [b]
    env.step(_action(env, "select_control_group", control_group_act=0, control_group_id=4))  # recall
    assert env._env.selection == [a, b]
    env.step(_action(env, "select_army", select_add=0))
    obs = env.step(_action(env, "select_unit", select_unit_act=0, select_unit_id=1))[0]
    assert env._env.selection == [b]
    assert obs["available_actions"][list(env.interface.function_ids).index(331)]  # Move_screen


def _scripted_move_to_beacon(env: StarCraft2Env, episodes: int) -> list[float]:
    """Select the marine, then click the beacon's centre whenever it moves: the task's best play."""
    relative = [layer.name for layer in env.interface.screen_layers].index("player_relative")
    scores, obs = [], env.reset(seed=7)[0]
    for _ in range(episodes):
        total, last, done = 0.0, None, False
        while not done:
            if not obs["available_actions"][list(env.interface.function_ids).index(331)]:
                action = _action(env, "select_army")
            else:
                ys, xs = np.nonzero(obs["screen"][relative] == 3)
                target = (int(round(xs.mean())), int(round(ys.mean())))
                action = _action(env, "Move_screen", screen=target) if target != last else _action(env, "no_op")
                last = target
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        scores.append(total)
        obs = env.reset()[0]
    return scores


def test_calibration_a_perfect_player_scores_about_the_papers_human_and_random_about_its_random():
    """The simulator's geometry was chosen so that scripted best play on MoveToBeacon lands near the SC2LE
    paper's human score (28; measured here 27.1-27.4 at 16 and 32 pixels) and a uniformly random
    policy near its random one (1)."""
    env = _env("MoveToBeacon")
    assert 25.0 <= np.mean(_scripted_move_to_beacon(env, 6)) <= 30.0
    rng = np.random.default_rng(0)
    env.action_space.seed(0)
    scores, obs = [], env.reset(seed=3)[0]
    for _ in range(6):
        total, done = 0.0, False
        while not done:
            action = env.action_space.sample()
            action[0] = rng.choice(np.flatnonzero(obs["available_actions"]))
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        scores.append(total)
        obs = env.reset()[0]
    assert np.mean(scores) <= 3.0


def test_episodes_last_120_seconds_of_game_time_and_a_shorter_limit_truncates():
    env = _env("MoveToBeacon")
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(_action(env, "no_op"))
        steps, done = steps + 1, terminated or truncated
    assert (steps, terminated, truncated) == (240, True, False)  # 1,920 game loops / step_mul 8
    env = _env("MoveToBeacon", SC2Options(screen_size=S, minimap_size=8, game_steps_per_episode=400))
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(_action(env, "no_op"))
        steps, done = steps + 1, terminated or truncated
    assert (steps, terminated, truncated) == (50, False, True)


def test_without_offering_no_op_the_agent_must_select_first_and_no_op_stays_the_fallback():
    options = SC2Options(screen_size=S, minimap_size=8, functions=("select_army", "Move_screen"), offer_no_op=False)
    env = _env("MoveToBeacon", options)
    names = [f.name for f in env.interface.functions]
    obs, _ = env.reset(seed=0)
    assert [names[i] for i in np.flatnonzero(obs["available_actions"])] == ["select_army"]
    obs, *_ = env.step(_action(env, "select_army"))
    assert [names[i] for i in np.flatnonzero(obs["available_actions"])] == ["select_army", "Move_screen"]
    # a call the mask forbids still reaches pysc2 as no_op (as with every function set)
    assert env.step(_action(env, "no_op"))[4]["unavailable_actions"] == 1


def test_replays_are_refused_on_a_simulated_map_with_one_line():
    """(train -> watch -> evaluate on sc2-sim/ is tests/test_sc2.py's end-to-end test, beside the mock's.)"""
    proc = subprocess.run([sys.executable, "launch/train_ppo.py", "--env-id", "sc2-sim/MoveToBeacon", "--save-replay-every", "1"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "simulated and has no .SC2Replay" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
