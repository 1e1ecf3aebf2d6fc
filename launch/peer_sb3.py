"""One Stable-Baselines3 PPO run with rl-zoo's tuned hyperparameters, timed the way our benchmark times ours.

Not one of our commands: `launch/benchmark.py --peer-python PY` runs it under PY, an interpreter that has
stable-baselines3 and rl_zoo3 installed (`make peers` builds one in .peers/; they are not our
dependencies), seed by seed beside our own runs. It imports nothing of this project.

    .peers/bin/python launch/peer_sb3.py --env-id CartPole-v1 --seed 1 --threshold 475

rl-zoo's `hyperparams/ppo.yml` entry for the env is applied as rl-zoo's ExperimentManager applies it:
`n_envs` envs in a DummyVecEnv with a Monitor each, `normalize` -> VecNormalize, `lin_X` -> a linear
schedule from X to 0, `policy_kwargs` evaluated; the rest goes to PPO as keyword arguments. Entries this
runner does not build (frame stacks, env wrappers, callbacks) are refused by name. The clock starts
before the envs are made (ours starts at the workers' start), and "solved" is ours: the mean return of
the last 100 finished episodes reaches the threshold, checked after every vector step (ours checks after
each rollout, which can only make ours later). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
import time
from collections import deque
from pathlib import Path

# Keys of rl-zoo's yml that configure the run around PPO rather than PPO itself.
_AROUND_PPO = {"n_envs", "n_timesteps", "policy", "normalize"}
_NOT_BUILT = {"frame_stack", "env_wrapper", "callback", "vec_env_wrapper", "env_kwargs", "normalize_kwargs"}


def rl_zoo_hyperparams(env_id: str) -> dict:
    """rl-zoo's PPO entry for env_id, read from the installed package's yml without importing rl_zoo3
    (whose import pulls in optuna and the Hugging Face hub)."""
    import yaml

    spec = importlib.util.find_spec("rl_zoo3")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rl_zoo3 is not installed for this interpreter (make peers)")
    table = yaml.safe_load((Path(list(spec.submodule_search_locations)[0]) / "hyperparams" / "ppo.yml").read_text())
    if env_id not in table:
        raise SystemExit(f"rl-zoo has no tuned PPO entry for {env_id}")
    return dict(table[env_id])


def linear_schedule(start: float):
    """rl-zoo's lin_X: X at the start of training, 0 at its end (SB3 passes the progress remaining, 1 -> 0)."""
    return lambda progress_remaining: progress_remaining * start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env-id", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threshold", type=float, default=None, help="solved at this last-100 mean return")
    parser.add_argument("--budget", type=int, default=0, help="env steps; 0 = rl-zoo's n_timesteps")
    parser.add_argument("--stop", action=argparse.BooleanOptionalAction, default=True, help="stop once solved")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(args.torch_threads)
    hyper = rl_zoo_hyperparams(args.env_id)
    refused = sorted(_NOT_BUILT & hyper.keys())
    if refused:
        raise SystemExit(f"rl-zoo's {args.env_id} entry uses {', '.join(refused)}, which this runner does not build")
    budget = args.budget or int(float(hyper["n_timesteps"]))
    kwargs = {k: v for k, v in hyper.items() if k not in _AROUND_PPO}
    for key in ("learning_rate", "clip_range"):
        if isinstance(kwargs.get(key), str) and kwargs[key].startswith("lin_"):
            kwargs[key] = linear_schedule(float(kwargs[key][4:]))
    if isinstance(kwargs.get("policy_kwargs"), str):
        kwargs["policy_kwargs"] = eval(kwargs["policy_kwargs"], {"nn": torch.nn, "dict": dict})  # rl-zoo does the same

    recent: deque[float] = deque(maxlen=100)
    solved_at: list[tuple[int, float]] = []

    class SolvedWatch(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    recent.append(float(info["episode"]["r"]))
            if (not solved_at and args.threshold is not None and len(recent) == recent.maxlen
                    and sum(recent) / len(recent) >= args.threshold):
                solved_at.append((self.num_timesteps, time.perf_counter() - start))
            return not (solved_at and args.stop)

    start = time.perf_counter()
    env = make_vec_env(args.env_id, n_envs=int(hyper.get("n_envs", 1)), seed=args.seed)
    if hyper.get("normalize"):
        env = VecNormalize(env, gamma=float(kwargs.get("gamma", 0.99)))
    model = PPO(hyper.get("policy", "MlpPolicy"), env, seed=args.seed, device="cpu", verbose=0, **kwargs)
    learn_start = time.perf_counter()
    model.learn(total_timesteps=budget, callback=SolvedWatch())
    end = time.perf_counter()
    steps = int(model.num_timesteps)
    print(json.dumps({
        "peer": "sb3+rl-zoo", "env_id": args.env_id, "seed": args.seed, "solved": bool(solved_at),
        "steps_to_solve": solved_at[0][0] if solved_at else None,
        "seconds_to_solve": solved_at[0][1] if solved_at else None,
        "total_steps": steps, "total_seconds": end - start, "sps": steps / max(end - learn_start, 1e-9),
        "final_mean_return": sum(recent) / len(recent) if recent else None, "torch_threads": torch.get_num_threads(),
        "versions": {p: importlib.metadata.version(p) for p in ("stable-baselines3", "rl_zoo3", "torch", "gymnasium")},
        "hyperparams": {k: str(v) for k, v in hyper.items()},
        "python": sys.version.split()[0],
    }))  # fmt: skip
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
