"""Raw Atari env steps/s of EnvPool beside ale-py's AtariVectorEnv (our Atari path), with the same
preprocessing and the same random actions, timed in turn in one process so that both see the same machine.

Not one of our commands and not our dependency: run it under an interpreter that has envpool and ale-py
(`make peers` puts both in .peers/). It imports nothing of this project.

    .peers/bin/python launch/peer_envpool.py --games Breakout Pong --num-envs 8 --threads 2

Both get what envs/atari.py asks of ale-py: 84x84 grayscale, 4 stacked frames, frameskip 4 with the max of
the last two frames, sticky actions 0.25 (v5), up to 30 no-ops and FIRE at reset, a life loss not ending
the episode, rewards unclipped, 108,000 frames at most. Prints a Markdown table: the median (min-max) of
--repeats timings of --steps vector steps for each library, and EnvPool's median over ale-py's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np


def make_envs(game: str, num_envs: int, threads: int) -> dict[str, gym.vector.VectorEnv]:
    import envpool
    from ale_py.vector_env import AtariVectorEnv

    return {
        "envpool": envpool.make_gymnasium(
            f"{game}-v5", num_envs=num_envs, batch_size=num_envs, num_threads=threads, seed=0,
            episodic_life=False, reward_clip=False, repeat_action_probability=0.25, noop_max=30, stack_num=4,
            img_height=84, img_width=84, use_fire_reset=True, max_episode_steps=27_000,
        ),
        "ale-py": AtariVectorEnv(
            game="".join("_" + c.lower() if c.isupper() and k else c.lower() for k, c in enumerate(game)),
            num_envs=num_envs, num_threads=threads, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            img_height=84, img_width=84, grayscale=True, stack_num=4, frameskip=4, maxpool=True, noop_max=30,
            use_fire_reset=True, episodic_life=False, reward_clipping=False, repeat_action_probability=0.25,
            max_num_frames_per_episode=108_000,
        ),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games", nargs="+", default=["Breakout", "Pong"], help="Atari games, as EnvPool names them")
    parser.add_argument("--num-envs", type=int, default=8, help="envs in each vector env (our Atari preset: 8)")
    parser.add_argument("--threads", type=int, default=2, help="threads of each vector env (ours: one per usable core)")
    parser.add_argument("--steps", type=int, default=2000, help="vector steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings per library, interleaved")
    args = parser.parse_args()
    import ale_py
    import envpool

    print("| game | envs | threads | library | env steps/s (median of timings) | EnvPool / ale-py |")
    print("|---|---|---|---|---|---|")
    for game in args.games:
        envs = make_envs(game, args.num_envs, args.threads)
        rng = np.random.default_rng(0)
        timings: dict[str, list[float]] = {name: [] for name in envs}
        for env in envs.values():
            env.reset()
        for _ in range(args.repeats):
            for name, env in envs.items():
                n = getattr(env, "single_action_space", env.action_space).n  # EnvPool's space is one env's
                actions = rng.integers(n, size=(args.steps, args.num_envs))  # drawn before the clock starts
                start = time.perf_counter()
                for a in actions:
                    env.step(a)
                timings[name].append(args.steps * args.num_envs / (time.perf_counter() - start))
        ratio = statistics.median(timings["envpool"]) / statistics.median(timings["ale-py"])
        for name, values in timings.items():
            print(f"| {game} | {args.num_envs} | {args.threads} | {name} | {statistics.median(values):,.0f} "
                  f"({min(values):,.0f}-{max(values):,.0f}) | {f'{ratio:.2f}x' if name == 'envpool' else ''} |", flush=True)  # fmt: skip
        for env in envs.values():
            env.close()
    print(f"\nenvpool {envpool.__version__}, ale-py {ale_py.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
