"""Ray for every worker pool: joining a cluster (with the token authentication its head uses) or starting
Ray on this machine, on loopback. `import ray` happens only here, only when a Ray backend is chosen."""

from __future__ import annotations

import os

from training.errors import ConfigError


def _is_loopback(address: str | None) -> bool:
    host = (address or "").rsplit(":", 1)[0]
    return host.startswith("127.") or host in ("localhost", "[::1]")


def ray_token_available() -> bool:
    """Whether Ray would find an authentication token here, in its own order: RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _import_ray(on_loopback: bool, joining: bool):
    if joining and "RAY_AUTH_MODE" not in os.environ and ray_token_available():
        # Ray 2.60's `ray start --head` turns token authentication on when it finds a token, and a driver
        # sends its token only in token mode. So a driver that finds a token joins in token mode (a head
        # without authentication accepts that too); one that finds none joins as Ray's default,
        # unauthenticated, which is what a head started without a token runs. RAY_AUTH_MODE, when the
        # user sets it, decides.
        os.environ["RAY_AUTH_MODE"] = "token"
    if on_loopback:
        # Ray replaces a loopback address by the machine's network address unless this is 0 (read when
        # ray is imported): a Ray on this machine alone, or a head started with --node-ip-address=127.0.0.1,
        # then stays on loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray, which is not installed: run pip install -e '.[ray]'") from None
    return ray


def connect_ray(address: str | None, num_cpus: int):
    """Ray, initialised for this process: joining the cluster at `address` ('auto' or HOST:PORT), or else a
    Ray of `num_cpus` logical CPUs on this machine, on loopback. Returns (ray, whether this call started
    it, so that its caller shuts it down). A driver already connected is left as it is."""
    ray = _import_ray(on_loopback=not address or _is_loopback(address), joining=bool(address))
    if ray.is_initialized():
        return ray, False
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as e:
            raise ConfigError(
                f"--ray-address {address}: could not join a Ray cluster there ({e}); start one with "
                "`ray start --head`; a head with token authentication needs its token here too "
                "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
            ) from None
    else:
        # On loopback: a single-machine Ray has no reason to listen on the network.
        # address="local": always a new Ray of its own, never one that RAY_ADDRESS or the file a `ray start`
        # left in the temp folder (/tmp/ray/ray_current_cluster) points at.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 _node_ip_address="127.0.0.1")
    return ray, True
