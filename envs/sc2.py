"""StarCraft II through pysc2, as a Gymnasium env: `sc2/<map>` plays the game, `sc2-mock/<map>` runs the
same adapter over pysc2's own mock (`mock_sc2_env.SC2TestEnv`), which needs no game, and `sc2-sim/<map>`
over envs.sc2_sim's simulated mini-games (MoveToBeacon, CollectMineralShards, DefeatRoaches): pysc2's
own observation and action code over a simulator, NOT the game; its scores are simulator scores.

Observations (a Dict):
  screen     int32 [C_s, S, S]  the chosen feature-screen layers (`SC2Options.screen_features`)
  minimap    int32 [C_m, M, M]  the chosen feature-minimap layers
  player     float32 [11]       pysc2's non-spatial player features (minerals, supply, ...)
  available_actions int8 [F]    1 where the function (of the chosen set) can be called now
Actions: MultiDiscrete [function, screen, minimap, screen2, queued, control_group_act, ...]: the index of a
function in the chosen set, then one value per pysc2 argument type (pysc2's TYPES order); a point is the
flat index y * size + x. Only the arguments the function takes are sent; the others are ignored (and
agents.sc2_networks gives them no probability mass). An unavailable function becomes no_op and is
counted in info["unavailable_actions"], so that random actions (gymnasium's env checker) are safe.

The game starts on the first reset, in the process that steps the env (pysc2 needs its absl flags
parsed there; envs.sc2_compat does it), with the seed of that reset; it is not re-seeded later (the
simulator is: a reset with a seed replays the same games).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from envs.sc2_compat import import_pysc2
from envs.sc2_sim import SIM_MAPS, SimulatedSC2Env  # pysc2 itself is imported only when a game starts
from envs.seed_folding import C_INT_SEEDS, fold_seed

SC2_PREFIX = "sc2/"
MOCK_PREFIX = "sc2-mock/"
SIM_PREFIX = "sc2-sim/"
MINI_GAMES = (
    "MoveToBeacon", "CollectMineralShards", "FindAndDefeatZerglings", "DefeatRoaches",
    "DefeatZerglingsAndBanelings", "CollectMineralsAndGas", "BuildMarines",
)  # fmt: skip
MELEE_MAPS = ("Simple64", "Simple96", "Simple128", "Flat32", "Flat48", "Flat64", "Flat96", "Flat128")
# pysc2's argument types, in its TYPES order; the action vector holds one value for each after the function.
ARGUMENT_TYPES = (
    "screen", "minimap", "screen2", "queued", "control_group_act", "control_group_id", "select_point_act",
    "select_add", "select_unit_act", "select_unit_id", "select_worker", "build_queue_id", "unload_id",
)  # fmt: skip
SPATIAL_ARGUMENTS = ("screen", "minimap", "screen2")
# pysc2's Linux client release that its 4.0 specs match, for the missing-game message.
LINUX_CLIENT = "4.10 (https://github.com/Blizzard/s2client-proto#linux-packages)"
MINI_GAMES_URL = "https://github.com/deepmind/pysc2/releases/download/v1.2/mini_games.zip"

Race = Literal["random", "terran", "zerg", "protoss"]
Difficulty = Literal[
    "very_easy", "easy", "medium", "medium_hard", "hard", "harder", "very_hard", "cheat_vision", "cheat_money",
    "cheat_insane",
]  # fmt: skip


@dataclass(frozen=True)
class SC2Options:
    """How the StarCraft II envs (sc2/..., sc2-mock/...) are set up."""

    screen_size: int = 32
    """feature-screen resolution (S x S); the SC2LE paper used 64"""
    minimap_size: int = 32
    """feature-minimap resolution (M x M)"""
    step_mul: int = 8
    """game steps per agent step (8 is ~180 actions per minute at normal speed)"""
    screen_features: tuple[str, ...] = ("player_relative", "unit_type", "selected", "unit_hit_points_ratio", "unit_density")
    """feature-screen layers the agent sees, by pysc2 name ('all' for all 27)"""
    minimap_features: tuple[str, ...] = ("player_relative", "selected", "visibility_map", "camera")
    """feature-minimap layers the agent sees, by pysc2 name ('all' for all 11)"""
    functions: tuple[str, ...] = ()
    """the action functions the agent may call, by pysc2 name (e.g. no_op select_army Move_screen); empty = all 573"""
    race: Race = "terran"
    """the agent's race on melee maps"""
    bot_race: Race = "random"
    """the built-in AI's race on melee maps"""
    difficulty: Difficulty = "very_easy"
    """the built-in AI's difficulty on melee maps"""
    game_steps_per_episode: int = 0
    """end episodes after this many game steps (as a time limit: the last state bootstraps); 0 = the map's own limit"""
    visualize: bool = False
    """open pysc2's pygame renderer for every game (needs a display)"""
    offer_no_op: bool = True
    """let the agent choose no_op (always available); off, it is offered only when nothing else is (a greedy policy that picks no_op in a state no_op does not change stays there for the episode)"""
    fc_mode: Literal["pooled", "paper"] = "pooled"
    """FullyConv's fully connected layer: over the state average-pooled to 8x8 (fast), or the paper's, over all of it (16.8M weights at 32x32)"""


def is_sc2(env_id: str) -> bool:
    return env_id.startswith((SC2_PREFIX, MOCK_PREFIX, SIM_PREFIX))


def is_sc2_sim(env_id: str) -> bool:
    return env_id.startswith(SIM_PREFIX)


def sc2_map_name(env_id: str) -> str:
    return env_id.split("/", 1)[1]


class SC2NotFoundError(RuntimeError):
    """The StarCraft II game or the map is not installed where pysc2 looks."""


class SC2OptionsError(ValueError):
    """SC2Options naming layers or functions that pysc2 does not have."""


def check_game_installed(map_name: str | None) -> None:
    """Raise SC2NotFoundError, saying what to install where, unless the Linux client and the map (if one
    is named) exist. Only Linux is checked here (pysc2 finds the Windows and macOS installs by itself)."""
    if platform.system() != "Linux":
        return
    base = Path(os.path.expanduser(os.environ.get("SC2PATH", "~/StarCraftII")))
    where = f"SC2PATH={os.environ['SC2PATH']}" if "SC2PATH" in os.environ else f"{base} (SC2PATH is not set)"
    versions = base / "Versions"
    if not versions.is_dir() or not any(versions.glob("Base*/SC2_x64")):
        raise SC2NotFoundError(
            f"StarCraft II is not installed: no {versions}/Base*/SC2_x64 under {where}. Install the Linux "
            f"client {LINUX_CLIENT} into ~/StarCraftII or point SC2PATH at it, and unzip the maps into its Maps "
            f"folder ({base / 'Maps' / 'mini_games'} for the mini-games: {MINI_GAMES_URL}). To run the whole "
            f"loop without the game, use --env-id sc2-mock/{map_name or 'MoveToBeacon'}"
        )
    if map_name is None:
        return
    folder = "mini_games" if map_name in MINI_GAMES else "Melee"
    map_file = base / "Maps" / folder / f"{map_name}.SC2Map"
    if not map_file.is_file():
        source = MINI_GAMES_URL if map_name in MINI_GAMES else "the Melee map pack (https://github.com/Blizzard/s2client-proto#map-packs)"
        raise SC2NotFoundError(f"map {map_name} not found at {map_file}: unzip {source} into {base / 'Maps'}")


def _pick_layers(names: tuple[str, ...], layers, what: str) -> list:
    if tuple(names) == ("all",):
        return list(layers)
    known = {layer.name: layer for layer in layers}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        hint = difflib.get_close_matches(unknown[0], known, n=3) if unknown else []
        raise SC2OptionsError(
            f"--sc2.{what}-features {unknown or '()'} are not pysc2 layers{f' (did you mean {hint}?)' if hint else ''}; "
            f"choose from: {', '.join(known)} (or 'all')"
        )
    return [known[n] for n in names]


@dataclass(frozen=True)
class FeatureLayer:
    name: str
    scale: int
    categorical: bool


class SC2Interface:
    """The conversions between pysc2 and the Gymnasium spaces, without a game: spaces, observations,
    and FunctionCalls. Agents read their layer and argument layout from here too."""

    def __init__(self, options: SC2Options):
        sc = import_pysc2()
        self.sc, self.options = sc, options
        self.screen_layers = _pick_layers(options.screen_features, sc.features.SCREEN_FEATURES, "screen")
        self.minimap_layers = _pick_layers(options.minimap_features, sc.features.MINIMAP_FEATURES, "minimap")
        all_functions = sc.actions.FUNCTIONS
        if options.functions:
            by_name = {f.name: f for f in all_functions}
            unknown = [n for n in options.functions if n not in by_name]
            if unknown:
                hint = difflib.get_close_matches(unknown[0], by_name, n=3)
                raise SC2OptionsError(f"--sc2.functions: unknown pysc2 functions {unknown}{f' (did you mean {hint}?)' if hint else ''}")
            names = list(dict.fromkeys(("no_op", *options.functions)))  # no_op stands in for unavailable calls
            self.functions = [by_name[n] for n in names]
        else:
            self.functions = list(all_functions)
        self.function_ids = np.array([int(f.id) for f in self.functions])
        self._screen_indices = [layer.index for layer in self.screen_layers]
        self._minimap_indices = [layer.index for layer in self.minimap_layers]
        self._index_of_id = np.full(len(all_functions), -1, dtype=np.int64)
        self._index_of_id[self.function_ids] = np.arange(len(self.functions))
        self._no_op_index = int(self._index_of_id[int(sc.actions.FUNCTIONS.no_op.id)])
        self.argument_sizes = [self._argument_size(name) for name in ARGUMENT_TYPES]
        # uses[f, j]: whether function f (index in the chosen set) takes argument type j.
        self.uses = np.zeros((len(self.functions), len(ARGUMENT_TYPES)), dtype=bool)
        for i, f in enumerate(self.functions):
            for arg in f.args:
                self.uses[i, ARGUMENT_TYPES.index(arg.name)] = True

    def _argument_size(self, name: str) -> int:
        if name in ("screen", "screen2"):
            return self.options.screen_size**2
        if name == "minimap":
            return self.options.minimap_size**2
        return int(getattr(self.sc.actions.TYPES, name).sizes[0])

    @property
    def feature_layers(self) -> dict[str, list[FeatureLayer]]:
        categorical = self.sc.features.FeatureType.CATEGORICAL
        return {
            key: [FeatureLayer(layer.name, int(layer.scale), layer.type == categorical) for layer in layers]
            for key, layers in (("screen", self.screen_layers), ("minimap", self.minimap_layers))
        }

    def _layer_box(self, layers: list, size: int) -> gym.spaces.Box:
        # Categorical layers are ids below their scale; numeric ones (hit points, energy) can exceed theirs.
        categorical = self.sc.features.FeatureType.CATEGORICAL
        high = np.array([layer.scale - 1 if layer.type == categorical else np.iinfo(np.int32).max for layer in layers])
        high = np.broadcast_to(high[:, None, None], (len(layers), size, size)).astype(np.int32)
        return gym.spaces.Box(0, high, dtype=np.int32)

    @property
    def observation_space(self) -> gym.spaces.Dict:
        o = self.options
        return gym.spaces.Dict({
            "screen": self._layer_box(self.screen_layers, o.screen_size),
            "minimap": self._layer_box(self.minimap_layers, o.minimap_size),
            # Finite bound: minerals, supply and the like are counts well below 2**31.
            "player": gym.spaces.Box(0.0, float(2**31 - 1), (len(self.sc.features.Player),), np.float32),
            "available_actions": gym.spaces.MultiBinary(len(self.functions)),
        })  # fmt: skip

    @property
    def action_space(self) -> gym.spaces.MultiDiscrete:
        return gym.spaces.MultiDiscrete([len(self.functions), *self.argument_sizes])

    def agent_interface_format(self):
        o = self.options
        dims = self.sc.sc2_env.Dimensions(screen=o.screen_size, minimap=o.minimap_size)
        return self.sc.sc2_env.AgentInterfaceFormat(feature_dimensions=dims)

    def observation(self, obs) -> dict[str, np.ndarray]:
        """pysc2's observation (a NamedDict of arrays) as this env's observation."""
        available = np.zeros(len(self.functions), dtype=np.int8)
        ids = np.asarray(obs["available_actions"], dtype=np.int64)
        index = self._index_of_id[ids[ids < len(self._index_of_id)]]
        available[index[index >= 0]] = 1
        if not self.options.offer_no_op and available.sum() > available[self._no_op_index]:
            available[self._no_op_index] = 0
        return {
            "screen": np.asarray(obs["feature_screen"])[self._screen_indices].astype(np.int32),
            "minimap": np.asarray(obs["feature_minimap"])[self._minimap_indices].astype(np.int32),
            "player": np.asarray(obs["player"], dtype=np.float32),
            "available_actions": available,
        }

    def function_call(self, action: np.ndarray, available: np.ndarray | None = None):
        """The pysc2 FunctionCall of an action vector. Points are clipped into the screen or minimap
        (pysc2's own bounds check lets coordinates equal to the size through) and sent as (x, y), while
        the flat index is y * size + x, as in the [y, x] arrays. An unavailable function (per `available`,
        the observation's mask) becomes no_op."""
        index = int(action[0])
        if available is not None and not available[index]:
            index = self._no_op_index
        function = self.functions[index]
        arguments = []
        for arg in function.args:
            j = ARGUMENT_TYPES.index(arg.name)
            value = int(np.clip(action[1 + j], 0, self.argument_sizes[j] - 1))
            if arg.name in SPATIAL_ARGUMENTS:
                size = self.options.minimap_size if arg.name == "minimap" else self.options.screen_size
                y, x = divmod(value, size)
                arguments.append([x, y])
            else:
                arguments.append([value])
        return self.sc.actions.FunctionCall(function.id, arguments)


class StarCraft2Env(gym.Env):
    """One pysc2 game (or pysc2's mock) as a Gymnasium env; see the module docstring for the spaces."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 22.4 / 8}

    def __init__(
        self,
        map_name: str,
        mock: bool = False,
        simulated: bool = False,
        options: SC2Options | None = None,
        replay_dir: str | None = None,
        save_replay_episodes: int = 0,
        render_mode: str | None = None,
    ):
        self.map_name, self.mock, self.simulated = map_name, mock, simulated
        self.options = options or SC2Options()
        self.interface = SC2Interface(self.options)
        self.observation_space = self.interface.observation_space
        self.action_space = self.interface.action_space
        self.replay_dir, self.save_replay_episodes = replay_dir, save_replay_episodes
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": 22.4 / self.options.step_mul}
        if not (mock or simulated):
            check_game_installed(map_name)
        self._env = None
        self._available = None
        self._last_obs = None

    def game_kwargs(self, seed: int | None) -> dict[str, Any]:
        """What SC2Env (or the mock) is constructed with."""
        sc, o = self.interface.sc, self.options
        kwargs: dict[str, Any] = dict(
            map_name=self.map_name,
            agent_interface_format=self.interface.agent_interface_format(),
            step_mul=o.step_mul,
            game_steps_per_episode=o.game_steps_per_episode or None,
            visualize=o.visualize,
            realtime=False,
            random_seed=None if seed is None else fold_seed(seed, C_INT_SEEDS),
            save_replay_episodes=self.save_replay_episodes,
            replay_dir=self.replay_dir,
        )
        if self.map_name in MELEE_MAPS:
            kwargs["players"] = [
                sc.sc2_env.Agent(sc.sc2_env.Race[o.race]),
                sc.sc2_env.Bot(sc.sc2_env.Race[o.bot_race], sc.sc2_env.Difficulty[o.difficulty]),
            ]
        else:
            kwargs["players"] = [sc.sc2_env.Agent(sc.sc2_env.Race[o.race])]
        return kwargs

    def _start(self, seed: int | None):
        sc = self.interface.sc
        if self.simulated:
            return SimulatedSC2Env(**self.game_kwargs(seed))
        env_class = sc.mock_sc2_env.SC2TestEnv if self.mock else sc.sc2_env.SC2Env
        return env_class(**self.game_kwargs(seed))

    def _observe(self, timestep) -> dict[str, np.ndarray]:
        self._last_obs = timestep.observation
        obs = self.interface.observation(timestep.observation)
        self._available = obs["available_actions"]
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._env is None:
            self._env = self._start(seed)
        elif self.simulated and seed is not None:
            self._env.reseed(seed)  # the simulator, unlike the game, can start over from a seed
        (timestep,) = self._env.reset()
        return self._observe(timestep), {}

    def step(self, action):
        if self._env is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action)
        call = self.interface.function_call(action, self._available)
        unavailable = not self._available[int(action[0])]
        (timestep,) = self._env.step([call])
        obs = self._observe(timestep)
        last = bool(timestep.last())
        # pysc2 sets discount 0 when the game itself ended (victory, defeat, a mini-game's end trigger);
        # an episode cut by game_steps_per_episode keeps its discount: a time limit, so it bootstraps.
        terminated = last and timestep.discount == 0
        truncated = last and not terminated
        return obs, float(timestep.reward), terminated, truncated, {"unavailable_actions": int(unavailable)}

    def render(self) -> np.ndarray | None:
        """player_relative of the screen and the minimap side by side, in pysc2's palette (black before
        the first reset): the false-colour view the agent gets, for videos and the live window."""
        if self.render_mode != "rgb_array":
            return None
        features = self.interface.sc.features
        o = self.options
        if self._last_obs is None:
            screen = np.zeros((o.screen_size, o.screen_size), dtype=np.int32)
            minimap = np.zeros((o.minimap_size, o.minimap_size), dtype=np.int32)
        else:
            screen = np.asarray(self._last_obs["feature_screen"])[features.SCREEN_FEATURES.player_relative.index]
            minimap = np.asarray(self._last_obs["feature_minimap"])[features.MINIMAP_FEATURES.player_relative.index]
        # Upscale both to a common height of at least 256 pixels (nearest neighbour keeps the cells sharp).
        height = max(256, o.screen_size, o.minimap_size)
        panels = []
        for layer, grid in ((features.SCREEN_FEATURES.player_relative, screen), (features.MINIMAP_FEATURES.player_relative, minimap)):
            rgb = np.asarray(layer.color(grid), dtype=np.uint8)
            k = math.ceil(height / grid.shape[0])
            panels.append(np.kron(rgb, np.ones((k, k, 1), dtype=np.uint8))[:height, :height])
        return np.concatenate([panels[0], np.full((height, 4, 3), 255, np.uint8), panels[1]], axis=1)

    def close(self) -> None:
        # A crashed game may fail to close; the process is gone either way, and a failing close must not
        # stop the worker from starting a new game.
        if self._env is not None:
            with contextlib.suppress(Exception):
                self._env.close()
            self._env = None


def register_sc2_envs() -> None:
    """Register sc2/<map> and sc2-mock/<map> for every mini-game and melee map, and sc2-sim/<map> for the
    simulated ones (no pysc2 import here)."""
    for map_name in (*MINI_GAMES, *MELEE_MAPS):
        for prefix, mock in ((SC2_PREFIX, False), (MOCK_PREFIX, True)):
            env_id = prefix + map_name
            if env_id not in gym.registry:
                gym.register(env_id, entry_point="envs.sc2:StarCraft2Env", kwargs={"map_name": map_name, "mock": mock})
    for map_name in SIM_MAPS:
        if SIM_PREFIX + map_name not in gym.registry:
            gym.register(SIM_PREFIX + map_name, entry_point="envs.sc2:StarCraft2Env",
                         kwargs={"map_name": map_name, "simulated": True})  # fmt: skip


register_sc2_envs()
