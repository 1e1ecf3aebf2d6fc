"""PPO's rollout workers as Ray actors (the pool's Ray backend, training.workers.ray_actors), on this machine
or across a Ray cluster; imported only for `--backend ray`."""

from __future__ import annotations

from training.ppo.executors import RolloutExecutor


class RayExecutor(RolloutExecutor):
    """`address` None starts a Ray instance on this machine (and stops it on close); 'auto' or
    'HOST:PORT' joins a running cluster (`ray start --head`)."""

    def __init__(self, *args, address: str | None = None, **kwargs):
        super().__init__("ray", *args, ray_address=address, **kwargs)

    @property
    def pids(self) -> list[int | None]:
        """The actors' process ids (meaningful when they run on this machine)."""
        return self.pool.backend.pids
