"""Rate board-game players: `python launch/arena.py RUN_OR_CKPT... --games 20` plays every pair of the
given trained agents (MuZero or PPO runs, or checkpoint files) and the game's reference players round
robin, half the games with each moving first, then prints Elo ratings (a Bradley-Terry fit of all the
games, mean 1000) with each player's wins, draws and losses, and every pair's results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import tyro

from training.arena import agent_player, fit_elo, ratings_table, reference_players, round_robin
from training.cli import exit_process, run_cli
from training.errors import ConfigError
from training.human_play import PLAYABLE_ENVS
from training.trained_agent import load_trained_agent


@dataclass
class ArenaArgs:
    runs: Annotated[tyro.conf.Positional[tuple[str, ...]], tyro.conf.arg(metavar="RUN_OR_CKPT")] = ()
    """run folders (their newest checkpoint) or checkpoint files, all of the same game"""
    references: tuple[str, ...] = ("all",)
    """reference players to add: 'all' (the game's: random, and TicTacToe's perfect or Connect Four's 4-ply lookahead player), 'none', or names from those"""
    env_id: str | None = None
    """the game, when no run is given (rlgames/TicTacToe-v0 or rlgames/ConnectFour-v0)"""
    games: int = 20
    """games per pair (half with each player moving first)"""
    seed: int = 0
    """seed of the games (the reference players' and agents' random choices)"""
    stochastic: bool = False
    """agents sample their moves instead of playing the most likely one"""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(ArenaArgs, args=argv, description=__doc__.split("\n")[0])
    if args.games < 1:
        raise ConfigError(f"--games must be >= 1 (got {args.games})")
    agents = [load_trained_agent(run) for run in args.runs]
    games = {a.env_id for a in agents} | ({args.env_id} if args.env_id else set())
    if len(games) != 1 or not games <= set(PLAYABLE_ENVS):
        found = ", ".join(sorted(games)) or "none (give runs or --env-id)"
        raise ConfigError(f"arena.py rates players of one board game ({', '.join(PLAYABLE_ENVS)}); got {found}")
    (env_id,) = games
    available = reference_players(env_id)
    chosen = list(available) if "all" in args.references else [r for r in args.references if r != "none"]
    unknown = [r for r in chosen if r not in available]
    if unknown:
        raise ConfigError(f"--references {' '.join(unknown)}: {env_id} has {', '.join(available)} (or all, none)")
    players, names = [], set()
    for agent in agents:
        name = f"{agent.algo} {agent.run_dir.name} @{agent.global_step}"
        while name in names:
            name += "'"
        names.add(name)
        players.append(agent_player(name, agent.policy, not args.stochastic))
    players += [available[r] for r in chosen]
    if len(players) < 2:
        raise ConfigError("the arena needs at least two players: give runs, or keep --references all")
    print(f"{env_id}: {len(players)} players, {args.games} games per pair")
    results = round_robin(env_id, players, args.games, args.seed)
    print(ratings_table(fit_elo(results)))
    for r in results:
        print(f"{r.a} vs {r.b}: {r.wins} wins, {r.draws} draws, {r.losses} losses")
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
