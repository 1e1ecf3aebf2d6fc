"""MuZero's math: the batched tree search and its policies, the networks, the loss, the value transform."""
