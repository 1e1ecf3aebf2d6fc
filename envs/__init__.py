"""Environments: one factory that turns an env id into a (vectorised) Gymnasium env."""

from envs.factory import (
    SOLVED_RETURN,
    EnvSpecError,
    check_env_id,
    make_env,
    make_vector_env,
    probe_spaces,
    solved_return,
)

__all__ = ["SOLVED_RETURN", "EnvSpecError", "check_env_id", "make_env", "make_vector_env", "probe_spaces", "solved_return"]
