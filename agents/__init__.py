"""Networks, action distributions, PPO's math and MuZero's (agents.muzero). Imports neither `training` nor `launch`."""
