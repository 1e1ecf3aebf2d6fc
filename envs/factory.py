"""The one env factory shared by PPO, MuZero, evaluation and the benchmark.

`make_env` returns a picklable thunk so that the env is built inside whichever process steps it
(worker processes, Ray actors; pysc2 needs that). `make_vector_env` fixes gymnasium's autoreset mode
to SAME_STEP: on the step an episode ends, `info["final_obs"]` holds its last observation and the
returned observation is already the next episode's first. The rollout code relies on that to
bootstrap truncated episodes from V(final observation).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from envs.board_games import BOARD_OPPONENTS  # importing it registers rlgames/TicTacToe-v0 and ConnectFour-v0
from envs.partial_observability import register_partial_observability_envs
from envs.sc2 import SIM_MAPS, SIM_PREFIX, check_game_installed, is_sc2, is_sc2_sim, sc2_map_name

register_partial_observability_envs()

# Last-100-episode mean return at which an env counts as solved (gymnasium's reward thresholds where
# they exist; Acrobot and the Box envs use the thresholds the field reports against).
SOLVED_RETURN: dict[str, float] = {
    "CartPole-v1": 475.0,
    "rlgames/CartPoleNoVel-v1": 475.0,
    "Acrobot-v1": -100.0,
    "LunarLander-v3": 200.0,
    "Pendulum-v1": -200.0,
    "MountainCarContinuous-v0": 90.0,
}


def solved_return(env_id: str, stop_return: float | None = None) -> float | None:
    """The score at which a run on env_id counts as solved: `stop_return` when one is given (--stop-return),
    else the env's own: SOLVED_RETURN, or for a board game whose fixed opponent is perfect a mean result
    of 0 (it never loses); None when the env has none (Connect Four's opponent can be beaten)."""
    if stop_return is not None:
        return stop_return
    if env_id in BOARD_OPPONENTS:
        return 0.0 if BOARD_OPPONENTS[env_id].perfect else None
    return SOLVED_RETURN.get(env_id)


# Which optional extra provides an env family, for the error a user sees when it is missing.
_EXTRA_FOR_PREFIX = {
    "ALE/": "atari",
    "MinAtar/": "minatar",
    "LunarLander": "box2d",
    "BipedalWalker": "box2d",
    "CarRacing": "box2d",
    "sc2/": "sc2",
    "sc2-mock/": "sc2",
    "sc2-sim/": "sc2",
}


class EnvSpecError(ValueError):
    """An env id that cannot be built here: unknown, or its optional extra is not installed."""


def _extra_for(env_id: str) -> str | None:
    return next((extra for prefix, extra in _EXTRA_FOR_PREFIX.items() if env_id.startswith(prefix)), None)


def _missing_extra_error(env_id: str, extra: str, detail: str = "") -> EnvSpecError:
    because = f" ({detail})" if detail else ""
    return EnvSpecError(
        f"env '{env_id}' needs the '{extra}' extra, which is not installed{because}: run pip install -e '.[{extra}]'"
    )


def is_heavy(env_id: str) -> bool:
    """Emulators and physics engines (Atari, Box2D, StarCraft II): a step costs more than a process round
    trip, so they gain from worker processes, unlike classic control and MinAtar (5-20 us a step), which
    step fastest in-process."""
    return _extra_for(env_id) not in (None, "minatar")


def is_minatar(env_id: str) -> bool:
    return env_id.startswith("MinAtar/")


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def _env_class(env_id: str) -> Any:
    """What a registered id's entry point names (an env class, usually), without building an env; None
    for an unregistered id."""
    if env_id not in gym.registry:
        return None
    entry_point = gym.spec(env_id).entry_point
    return gym.envs.registration.load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point


def is_two_player(env_id: str) -> bool:
    """Whether env_id is a registered env that declares two players (metadata["players"] == 2, as
    envs.board_games' games do): one env playing both sides, observations from the mover's view, the
    reward to the mover."""
    return getattr(_env_class(env_id), "metadata", {}).get("players") == 2


def board_grid(env_id: str) -> tuple[int, int] | None:
    """The (rows, columns) grid a two-player board game's flat observation holds, or None."""
    grid = getattr(_env_class(env_id), "grid_shape", None) if is_two_player(env_id) else None
    return tuple(grid) if grid is not None else None


def check_env_id(env_id: str) -> None:
    """Raise EnvSpecError (with close matches or the pip command to run) unless env_id can be made; for
    sc2/... also SC2NotFoundError unless the game and the map are installed."""
    if is_atari(env_id):
        try:
            import ale_py
        except ImportError:
            raise _missing_extra_error(env_id, "atari") from None
        gym.register_envs(ale_py)
    if is_minatar(env_id):
        try:
            from envs.minatar import register_minatar

            register_minatar()
        except ImportError:
            raise _missing_extra_error(env_id, "minatar") from None
    if is_sc2_sim(env_id) and env_id not in gym.registry:
        raise EnvSpecError(
            f"the StarCraft II simulator has no map '{sc2_map_name(env_id)}'; it has "
            f"{', '.join(SIM_PREFIX + m for m in SIM_MAPS)} (the real game's maps are sc2/<map>)"
        )
    if is_sc2(env_id) and env_id in gym.registry:
        import importlib.util

        if importlib.util.find_spec("pysc2") is None:
            raise _missing_extra_error(env_id, "sc2")
        if env_id.startswith("sc2/"):
            check_game_installed(sc2_map_name(env_id))
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise EnvSpecError(f"unknown env id '{env_id}'.{hint} (`python -c \"import gymnasium; gymnasium.pprint_registry()\"` lists them)")


def _build_env(env_id: str, seed: int, render_mode: str | None, env_kwargs: Mapping[str, Any] | None = None) -> gym.Env:
    check_env_id(env_id)
    try:
        if is_atari(env_id):
            from envs.atari import make_atari_env

            env = make_atari_env(env_id, render_mode=render_mode, **(env_kwargs or {}))
        elif is_minatar(env_id):
            from envs.minatar import make_minatar_env

            env = gym.wrappers.RecordEpisodeStatistics(make_minatar_env(env_id, render_mode=render_mode))
        else:
            # Records the true (unnormalised, unclipped) episode return and length in `info["episode"]`.
            kwargs = {**(env_kwargs or {}), **({"render_mode": render_mode} if render_mode else {})}
            env = gym.wrappers.RecordEpisodeStatistics(gym.make(env_id, **kwargs))
    except gym.error.DependencyNotInstalled as e:
        extra = _extra_for(env_id)
        if extra is None:
            raise
        raise _missing_extra_error(env_id, extra, str(e).splitlines()[0]) from None
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    return env


def make_env(
    env_id: str, seed: int, render_mode: str | None = None, env_kwargs: Mapping[str, Any] | None = None
) -> Callable[[], gym.Env]:
    """A picklable thunk that builds one wrapped env; call it in the process that will step it.
    env_kwargs go to the env's constructor (StarCraft II's options, for instance)."""
    return functools.partial(_build_env, env_id, seed, render_mode, env_kwargs)


def make_vector_env(
    env_id: str, num_envs: int, seed: int, env_kwargs: Mapping[str, Any] | None = None
) -> gym.vector.VectorEnv:
    """`num_envs` copies stepped in this process, SAME_STEP autoreset, env i built for seed + i. Not reset
    yet: the caller's first `reset(seed=[seed + i ...])` is the only one (a StarCraft II env launches its
    game at its first reset, so a second reset here would launch it twice).

    In-process vectorisation is the fastest choice for cheap simulators (a process round trip costs
    more than a CartPole step); heavy envs get parallelism from several rollout workers instead. Atari
    games step in ale-py's C++ vector env (its own threads) unless env_kwargs' AtariOptions ask for
    gymnasium's wrappers.
    """
    if is_atari(env_id):
        from envs.atari import AtariOptions, make_atari_vector_env

        options = (env_kwargs or {}).get("options") or AtariOptions()
        if options.vector == "ale":
            return make_atari_vector_env(env_id, num_envs, options)
    return gym.vector.SyncVectorEnv(
        [make_env(env_id, seed + i, env_kwargs=env_kwargs) for i in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def probe_spaces(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> tuple[gym.Space, gym.Space]:
    """Observation and action space of one env, built and closed in this process (a StarCraft II env
    starts no game before its first reset)."""
    env = make_env(env_id, seed=0, env_kwargs=env_kwargs)()
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def episode_stats_from_info(info: dict) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of the episodes that ended this step (SAME_STEP autoreset info layout)."""
    final = info.get("final_info")
    if not final or "episode" not in final:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    done = final["_episode"]
    return final["episode"]["r"][done].astype(np.float32), final["episode"]["l"][done].astype(np.int64)
