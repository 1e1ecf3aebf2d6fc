"""Rollout workers and executors, learner loops, logging, checkpoints: the wiring between agents and envs."""
