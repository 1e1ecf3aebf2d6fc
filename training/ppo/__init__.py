"""PPO's part of training: its config and presets, rollout workers and executors, the learner, the loop."""
