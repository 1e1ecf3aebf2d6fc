"""The recurrent core of PPO's policies with memory: an LSTM (Hochreiter & Schmidhuber 1997) unrolled over
a rollout with the state reset at every episode start.

A policy's memory travels as one float tensor per env, [B, S]: for an LSTM of size H, S = 2H (h, then c);
a network with two cores (separate actor and critic LSTMs) concatenates theirs. One flat tensor per env is
what the rollout arrays, shared memory, Ray and checkpoints carry without knowing the network.

Acting is the T = 1 case of the same unroll that the PPO update runs over whole env sequences (truncated
backpropagation through the rollout, as CleanRL's ppo_atari_lstm and SB3-contrib's RecurrentPPO do), so the
update recomputes exactly the log-probabilities the workers acted with.
"""

from __future__ import annotations

import torch
from torch import nn

from agents.initialization import orthogonal_


class LSTMCore(nn.Module):
    """One LSTM layer (torch's nn.LSTM) over [T, B, in_features] inputs, with the state reset at episode starts.

    nn.LSTM runs a whole sequence in one call but knows nothing of resets, so an unroll through episode
    starts cuts each env's sequence into its episodes' pieces, runs the pieces side by side (padded to the
    longest) from their own initial states (the stored state, or zeros after a reset) and puts the outputs
    back in place: per step the same arithmetic as stepping one step at a time, in one call. Weights
    orthogonal with gain 1, biases 0, as CleanRL initialises its LSTM.
    """

    def __init__(self, in_features: int, size: int):
        super().__init__()
        self.size = size
        self.state_size = 2 * size
        self.lstm = nn.LSTM(in_features, size)
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight"):
                orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, episode_starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [T, B, in_features], memory [B, 2H] (h then c: the state before step 0), episode_starts [T, B]
        (1.0 where step t is an episode's first: the state is zeroed before it). Returns the outputs h_t
        [T, B, H] and, for one step (acting), the state after it [B, 2H]; None for longer unrolls (the PPO
        update has no use for it)."""
        steps, batch = x.shape[:2]
        keep = (1.0 - episode_starts[0]).unsqueeze(-1)
        h0, c0 = (part * keep for part in memory.split(self.size, dim=-1))
        if steps == 1:
            out, (h, c) = self.lstm(x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
            return out, torch.cat([h[0], c[0]], dim=-1)
        if not episode_starts[1:].any():
            return self.lstm(x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))[0], None

        # Pieces: each env's steps from one episode start (or step 0) to the next, numbered env by env.
        begins = episode_starts.t().bool().clone()  # [B, T], env-major
        begins[:, 0] = True
        piece = begins.reshape(-1).cumsum(0) - 1  # [B * T]: the piece of each step
        first_step = begins.reshape(-1).nonzero().squeeze(-1)  # [P]: where each piece begins
        position = torch.arange(batch * steps, device=x.device) - first_step[piece]  # step within its piece
        pieces, longest = first_step.shape[0], int(position.max()) + 1

        padded = x.new_zeros(longest, pieces, x.shape[-1])
        padded[position, piece] = x.transpose(0, 1).reshape(batch * steps, -1)
        # Initial states: the stored one for each env's first piece, zeros for pieces that begin an episode.
        first_piece = piece.reshape(batch, steps)[:, 0]
        h_init, c_init = h0.new_zeros(pieces, self.size), c0.new_zeros(pieces, self.size)
        h_init, c_init = h_init.index_copy(0, first_piece, h0), c_init.index_copy(0, first_piece, c0)
        out, _ = self.lstm(padded, (h_init.unsqueeze(0), c_init.unsqueeze(0)))
        return out[position, piece].reshape(batch, steps, -1).transpose(0, 1), None


def unroll(
    core: LSTMCore, features: torch.Tensor, memory: torch.Tensor, episode_starts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A core over time-major flattened features [T * B, F] (B = memory's rows): outputs [T * B, H] and,
    for T = 1, the state after the step [B, 2H]. episode_starts is [T * B] in the same order."""
    batch = memory.shape[0]
    steps = features.shape[0] // batch
    out, memory = core(features.reshape(steps, batch, -1), memory, episode_starts.reshape(steps, batch).float())
    return out.reshape(steps * batch, -1), memory
