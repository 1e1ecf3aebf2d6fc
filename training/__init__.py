"""The wiring between agents and envs: the run skeleton, config base, seeds, checkpoints, logging and
evaluation shared by both algorithms, and each algorithm's part (training.ppo, training.muzero)."""
