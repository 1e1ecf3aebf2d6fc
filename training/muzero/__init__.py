"""MuZero's part of training: its config, self-play workers, replay, learner, acting agent, the loop."""
