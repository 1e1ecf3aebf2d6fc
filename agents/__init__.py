"""Networks, action distributions and the PPO math. Imports neither `training` nor `launch`."""
