"""Playing a trained policy: greedy (or sampled) evaluation over many episodes, and single episodes with
their frames for watching and videos. Shared by training's periodic evaluation, `launch/evaluate.py`
and `launch/watch.py`.

A policy here is anything with `act(obs, generator, deterministic) -> (action, log_prob, value, ...)` over
a batch of observations as a dict of tensors (agents.networks.ActorCritic, MuZero's acting agent). A policy
with memory (`memory_size` > 0: agents.networks.PolicyValueNet) also takes the memory and where episodes
began, and gives the memory after the step as the fourth item: `MemoryCarrier` carries it through episodes.
Returns are the true game scores that `RecordEpisodeStatistics` records (before reward clipping or
scaling), so they compare across runs and with published numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.board_games import (
    BOARD_OPPONENTS,
    PERFECT_OPPONENT_ENVS,
    other_sides_result,
    perfect_moves,
    solve,
    winner,
)
from envs.factory import is_atari, make_env, make_vector_env
from envs.sc2 import is_sc2
from training.checkpoint import (
    save_best_checkpoint,
)
from training.interrupts import beat
from training.logger import RunLogger
from training.seeds import evaluation_seed
from training.video import (
    LiveViewer,
    PreviewFrames,
    VideoWriter,
    overlay_text,
    use_dummy_video_driver_if_headless,
)


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    losing_moves: int | None = None
    """a board game with a perfect opponent (TicTacToe): moves that give the draw away in the audit against
    every perfect line (training's evaluations run it); None where there is no audit"""

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def std_return(self) -> float:
        return float(self.returns.std())

    def summary(self) -> str:
        return (
            f"mean return {self.mean_return:.2f} +- {self.std_return:.2f}, mean length {self.lengths.mean():.1f} "
            f"+- {self.lengths.std():.1f} over {len(self.returns)} episodes"
        )

    def report(self, deterministic: bool, per_episode: bool = True) -> str:
        """One line per episode (unless per_episode=False), then the summary, as the launch scripts print it."""
        lines = [f"episode {i}: return {r:.2f}, length {n}" for i, (r, n) in enumerate(zip(self.returns, self.lengths, strict=True), 1)]
        lines = lines if per_episode else []
        return "\n".join([*lines, f"{'greedy' if deterministic else 'stochastic'}: {self.summary()}"])


class MemoryCarrier:
    """Acts with a policy for a batch of envs, carrying a policy's memory from step to step: each env's
    episode starts from a fresh state (tell it which envs began a new episode with `episodes_ended`)."""

    def __init__(self, policy: Any, num_envs: int):
        self.policy = policy
        self.memory = policy.initial_memory(num_envs) if getattr(policy, "memory_size", 0) else None
        self.episode_starts = torch.ones(num_envs)

    def act(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None, deterministic: bool) -> tuple:
        """(action, log_prob, value, ...) for the envs' observations."""
        if self.memory is None:
            return self.policy.act(obs, generator, deterministic)
        acted = self.policy.act(obs, generator, deterministic, self.memory, self.episode_starts)
        self.memory, self.episode_starts = acted[3], torch.zeros_like(self.episode_starts)
        return acted

    def act_one(self, obs: Any, generator: torch.Generator | None, deterministic: bool) -> tuple[int, float]:
        """(Discrete action, value estimate) for one env's unbatched observation: a carrier of one env, such
        as a board game's player."""
        acted = self.act(_obs_batch(obs, _device(self.policy), add_batch_dim=True), generator, deterministic)
        return int(acted[0][0]), float(acted[2][0])

    def episodes_ended(self, done: np.ndarray | bool) -> None:
        """done [num_envs]: the envs whose next step begins an episode."""
        self.episode_starts = torch.as_tensor(np.atleast_1d(done), dtype=torch.float32)


def _device(policy: torch.nn.Module) -> torch.device:
    return next(policy.parameters()).device


def _obs_batch(obs: Any, device: torch.device, add_batch_dim: bool = False) -> dict[str, torch.Tensor]:
    obs = obs if isinstance(obs, dict) else {"obs": obs}
    out = {k: torch.as_tensor(np.asarray(v)) for k, v in obs.items()}
    return {k: (v.unsqueeze(0) if add_batch_dim else v).to(device) for k, v in out.items()}


def _env_action(action: torch.Tensor, space: gym.Space) -> np.ndarray:
    action = action.cpu().numpy()
    return np.clip(action, space.low, space.high) if isinstance(space, gym.spaces.Box) else action


def greedy_by_default(env_id: str, stochastic: bool | None = None) -> bool:
    """Whether an evaluation of env_id takes each state's most likely action (True) or samples from the
    policy: `stochastic` when given, else sampled on Atari (ALE/*) and greedy everywhere else, as rl-zoo
    evaluates. A greedy Atari policy can wait at a serve until the 108,000-frame limit (Breakout brings a
    new ball only on FIRE after a lost life; an untrained agent whose most likely action is NOOP never
    presses it), so each such episode costs minutes and scores nothing."""
    return not stochastic if stochastic is not None else not is_atari(env_id)


def evaluate_policy(
    policy: torch.nn.Module, env_id: str, episodes: int, seed: int, deterministic: bool = True, num_envs: int = 8,
    env_kwargs: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Play `episodes` whole episodes on `min(num_envs, episodes)` envs stepped together (for a board
    game, `episodes` games against its fixed opponent: see play_against_board_opponent).

    Each env plays a fixed share of the episodes (SB3's evaluate_policy does the same): counting the first
    episodes to finish, whichever env they come from, would favour short episodes.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1 (got {episodes})")
    if env_id in BOARD_OPPONENTS:
        return play_against_board_opponent(policy, env_id, episodes, seed, deterministic)
    n = min(num_envs, episodes)
    targets = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    counts = np.zeros(n, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    generator = torch.Generator().manual_seed(seed)
    device = _device(policy)
    envs = make_vector_env(env_id, n, seed, env_kwargs)
    carrier = MemoryCarrier(policy, n)
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(n)])
        while (counts < targets).any():
            action = carrier.act(_obs_batch(obs, device), generator, deterministic)[0]
            obs, _, terminated, truncated, info = envs.step(_env_action(action, envs.single_action_space))
            carrier.episodes_ended(terminated | truncated)
            beat()  # progress, for the watchdog
            final = info.get("final_info")
            if final and "episode" in final:
                for i in np.flatnonzero(final["_episode"]):
                    if counts[i] < targets[i]:
                        returns.append(float(final["episode"]["r"][i]))
                        lengths.append(int(final["episode"]["l"][i]))
                        counts[i] += 1
    finally:
        envs.close()
    return EvalResult(np.array(returns, dtype=np.float64), np.array(lengths, dtype=np.int64))


def play_against_board_opponent(
    policy: torch.nn.Module, env_id: str, games: int, seed: int, deterministic: bool = True
) -> EvalResult:
    """Board games against the game's fixed opponent (envs.board_games.BOARD_OPPONENTS: TicTacToe's exact
    minimax player, Connect Four's lookahead player; each picks at random among the moves it rates best),
    the policy moving first in even games and second in odd ones. Each game's return is the policy's
    result: +1 win, 0 draw, -1 loss (an illegal move loses). Against a perfect opponent the mean is 0
    exactly when the policy never loses."""
    opponent = BOARD_OPPONENTS[env_id]
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    env = gym.make(env_id).unwrapped
    returns, lengths = [], []
    for game in range(games):
        side = 1 if game % 2 == 0 else -1
        obs, _ = env.reset(seed=seed + game)
        carrier = MemoryCarrier(policy, 1)  # a policy with memory remembers its own moves of this game
        length = 0
        while True:
            mover = env.to_play
            if mover == side:
                action = carrier.act_one(obs, generator, deterministic)[0]
            else:
                action = int(rng.choice(opponent.moves(env.board)))
            obs, reward, terminated, _, _ = env.step(action)
            beat()
            length += 1
            if terminated:  # the reward is the mover's: +1 for a win, -1 for an illegal move, 0 for a draw
                returns.append(reward if mover == side else other_sides_result(reward))
                lengths.append(length)
                break
    return EvalResult(np.array(returns, dtype=np.float64), np.array(lengths, dtype=np.int64))


@dataclass
class PerfectPlayAudit:
    positions: int
    """distinct positions the policy had to move in"""
    losing_moves: list[tuple[tuple[int, ...], int]]
    """(board from the mover's view, move) where the move gave away the game's value"""

    def summary(self) -> str:
        return f"{len(self.losing_moves)} losing moves in the {self.positions} positions met against every perfect line"


def audit_against_perfect_play(policy: torch.nn.Module, deterministic: bool = True, seed: int = 0) -> PerfectPlayAudit:
    """Every TicTacToe position the policy meets, as X and as O, against a perfect player that tries each
    of its best moves in turn, and the policy's moves there that lose the game's value (a drawn position
    left lost, or an illegal move). No losing move means no perfect opponent can ever beat the policy; a
    match of random games only samples these lines. Positions are searched in one batch per depth (a policy
    with memory meets each position from a fresh state)."""

    def play(board: tuple[int, ...], move: int) -> tuple[int, ...]:
        return tuple(-x for x in board[:move] + (1,) + board[move + 1 :])  # the next mover's view

    def over(board: tuple[int, ...]) -> bool:
        return winner(board) != 0 or all(board)

    def value_after(board: tuple[int, ...], move: int) -> int:
        """The game value for the mover after playing move."""
        after = play(board, move)
        return 1 if winner(after) else 0 if all(after) else -solve(after)

    generator = torch.Generator().manual_seed(seed)
    device = _device(policy)
    empty = (0,) * 9
    frontier = {empty} | {play(empty, m) for m in perfect_moves(empty)}  # the policy as X, and as O
    positions, losing = 0, []
    while frontier:
        boards = sorted(frontier)
        obs = {"obs": np.array(boards, np.float32), "action_mask": (np.array(boards) == 0).astype(np.int8)}
        moves = policy.act(_obs_batch(obs, device), generator, deterministic)[0].tolist()
        positions += len(boards)
        frontier = set()
        for board, move in zip(boards, moves, strict=True):
            if board[move] != 0 or value_after(board, move) < solve(board):
                losing.append((board, int(move)))
                continue
            after = play(board, move)
            if not over(after):
                frontier |= {nxt for m in perfect_moves(after) if not over(nxt := play(after, m))}
    return PerfectPlayAudit(positions, losing)


# Board games whose evaluation opponent cannot be beaten: 0 (no game lost) is their solved threshold.


def make_render_env(env_id: str, seed: int, env_kwargs: Mapping[str, Any] | None = None) -> gym.Env:
    """One env that renders RGB frames (off-screen where there is no display)."""
    use_dummy_video_driver_if_headless()
    return make_env(env_id, seed, render_mode="rgb_array", env_kwargs=env_kwargs)()


def video_fps(env: gym.Env, env_id: str) -> float:
    """Frames per second at which one frame per agent step plays in real time."""
    if is_atari(env_id):
        return 15.0  # the Atari 2600 draws 60 frames/s and the agent acts every 4th (frame skip 4)
    return float(env.metadata.get("render_fps") or 30)


@dataclass
class Episode:
    episode_return: float
    length: int
    completed: bool
    """False when on_frame stopped it early (a closed window)"""
    values: list[float]


def play_episode(
    policy: torch.nn.Module,
    env: gym.Env,
    seed: int,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
    on_frame: Callable[[np.ndarray, int, float, float | None], bool | None] | None = None,
) -> Episode:
    """Play one episode on a rendering env. Before each action, on_frame(frame, step, return so far,
    value estimate) sees the state the agent acts in, and once more at the end the state the last action
    led to, with value None (a board game's winning move, the crash that ended the episode), so a whole
    episode of length T gives T + 1 frames, as gymnasium's RecordVideo records; on_frame returning False
    ends the episode early."""
    device = _device(policy)
    obs, _ = env.reset(seed=seed)
    carrier = MemoryCarrier(policy, 1)
    episode_return, step, values = 0.0, 0, []
    while True:
        action, _, value = carrier.act(_obs_batch(obs, device, add_batch_dim=True), generator, deterministic)[:3]
        values.append(float(value[0]))
        if on_frame is not None and on_frame(env.render(), step, episode_return, values[-1]) is False:
            return Episode(episode_return, step, False, values)
        obs, reward, terminated, truncated, info = env.step(_env_action(action, env.action_space)[0])
        step += 1
        # The running score before reward clipping (Atari) where RecordEpisodeStatistics keeps it.
        try:
            episode_return = float(env.get_wrapper_attr("episode_returns"))
        except AttributeError:
            episode_return += float(reward)
        if terminated or truncated:
            if "episode" in info:
                episode_return = float(info["episode"]["r"])
            if on_frame is not None:
                on_frame(env.render(), step, episode_return, None)
            # The length in agent steps; Atari's info["episode"]["l"] counts emulator frames.
            return Episode(episode_return, step, True, values)


def record_episode(
    policy: torch.nn.Module, env_id: str, seed: int, path: Path, deterministic: bool = True, overlay: bool = False,
    preview: PreviewFrames | None = None, viewer: LiveViewer | None = None,
    generator: torch.Generator | None = None, fps: float | None = None, env_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Episode, Path | None, float]:
    """Play one episode on a rendering env and send its frames to a video file (MP4 or GIF by path's
    suffix; None for none), a dashboard preview and a live window. Returns the episode, the file
    written, and the frame rate used. Closing the window ends the episode early."""
    env = make_render_env(env_id, seed, env_kwargs)
    fps = fps or video_fps(env, env_id)
    if viewer is not None:
        viewer.fps = fps
    writer = VideoWriter(path, fps) if path is not None else None

    def on_frame(frame: np.ndarray, step: int, episode_return: float, value: float | None) -> bool:
        if overlay:
            lines = [f"step {step}", f"return {episode_return:.1f}"]
            if value is None:
                lines.append("episode over")
            else:
                lines.append(f"value {value:.2f}")
                # A searching agent (MuZero) also shows what its search of this move found.
                if hasattr(policy, "search_summary"):
                    lines += policy.search_summary()
            frame = overlay_text(frame, lines)
        if writer is not None:
            writer.append(frame)
        if preview is not None:
            preview.append(frame)
        return viewer.show(frame) if viewer is not None else True

    try:
        episode = play_episode(policy, env, seed, deterministic, generator, on_frame)
    finally:
        env.close()
        if writer is not None:
            writer.close()
    return episode, (writer.path if writer is not None else None), fps


class TrainingEvaluator:
    """Training's periodic evaluation (greedy, or sampled where `deterministic` is False; logged as eval/*),
    the best checkpoint it keeps (checkpoints/best.pt), and the recorded evaluation episodes of
    --capture-video (an MP4 under RUN_DIR/videos/ and a GIF in TensorBoard's Images tab). Any learner loop
    can use it."""

    def __init__(
        self, env_id: str, run_dir: Path | None, logger: RunLogger, seed: int, episodes: int, eval_every: int,
        capture_video: bool, video_every: int, best_return: float = -math.inf,
        env_kwargs: Mapping[str, Any] | None = None, best_losing_moves: int | None = None, deterministic: bool = True,
    ):  # fmt: skip
        # run_dir None: a learner that does not write (data-parallel ranks other than 0).
        self.env_id, self.logger, self.env_kwargs = env_id, logger, env_kwargs
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = evaluation_seed(seed)
        self.episodes, self.eval_every = episodes, eval_every
        self.capture_video, self.video_every = capture_video, video_every
        self.best_return, self.best_losing_moves = best_return, best_losing_moves
        self.deterministic = deterministic

    def evaluation_due(self, step_before: int, step_after: int) -> bool:
        """Whether an update that moved training from step_before to step_after crossed a multiple of
        eval_every."""
        return self.eval_every > 0 and step_after // self.eval_every > step_before // self.eval_every

    def video_due(self, iteration: int) -> bool:
        return self.capture_video and iteration % self.video_every == 0

    def evaluate(self, policy: torch.nn.Module, global_step: int, checkpoint_state: Callable[[], dict]) -> EvalResult:
        """Episodes, logged; a new best score saves checkpoint_state() as checkpoints/best.pt."""
        # StarCraft II games cost a process and a GB or more each: a few at a time.
        num_envs = min(self.episodes, 4 if is_sc2(self.env_id) else 16)
        result = evaluate_policy(policy, self.env_id, self.episodes, self.seed, self.deterministic, num_envs,
                                 self.env_kwargs)  # fmt: skip
        self.logger.scalars({
            "eval/episodic_return": result.mean_return,
            "eval/episodic_return_std": result.std_return,
            "eval/episodic_length": float(result.lengths.mean()),
        }, global_step)  # fmt: skip
        if self.env_id in PERFECT_OPPONENT_ENVS:
            audit = audit_against_perfect_play(policy, self.deterministic, self.seed)
            self.logger.scalars({"eval/losing_moves": len(audit.losing_moves)}, global_step)
            result = dataclasses.replace(result, losing_moves=len(audit.losing_moves))
        if self._beats_best(result):
            self.best_return, self.best_losing_moves = result.mean_return, result.losing_moves
            save_best_checkpoint(self.run_dir, {**checkpoint_state(), "eval_return": result.mean_return,
                                                "eval_losing_moves": result.losing_moves})  # fmt: skip
        return result

    def _beats_best(self, result: EvalResult) -> bool:
        """A higher mean return, or, where the audit runs, the same one with fewer losing moves: against
        the perfect player most evaluations of a good policy draw every game, and only the audit tells a
        flawless one from one that gives a position away."""
        if result.mean_return != self.best_return:
            return result.mean_return > self.best_return
        return None not in (result.losing_moves, self.best_losing_moves) and result.losing_moves < self.best_losing_moves

    def record_video(self, policy: torch.nn.Module, global_step: int) -> Path:
        path = self.run_dir / "videos" / f"train_step{global_step:09d}.mp4"
        preview = PreviewFrames()
        _, path, fps = record_episode(policy, self.env_id, self.seed, path, self.deterministic, preview=preview,
                                      env_kwargs=self.env_kwargs)  # fmt: skip
        frames = preview.result()
        self.logger.video("eval/video", frames, fps * len(frames) / max(1, preview.seen), global_step)
        return path
