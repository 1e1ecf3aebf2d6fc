"""How convolutional nets read a board game (envs/board_games.py), shared by PPO's BoardCNN and MuZero's
residual net: the flat observation from the mover's view (+1 own, -1 the opponent's, 0 empty) as two
planes, and a move as the cells it names."""

from __future__ import annotations

import torch


def board_planes(obs: torch.Tensor, grid_shape: tuple[int, int]) -> torch.Tensor:
    """[B, 2, H, W] float planes (own pieces, the opponent's) of flat boards obs [B, H * W] (or [B, H, W])."""
    board = obs.reshape(-1, *grid_shape)
    return torch.stack([board > 0, board < 0], dim=1).float()


def move_planes(num_moves: int, grid_shape: tuple[int, int]) -> torch.Tensor:
    """[num_moves, H, W]: 1 on the cells a move names, 0 elsewhere. A move is one cell where there are
    as many moves as cells (TicTacToe), one column where there are as many as columns (Connect Four's
    drops: where in the column the piece lands follows from the board)."""
    rows, columns = grid_shape
    if num_moves == rows * columns:
        return torch.eye(num_moves).view(num_moves, rows, columns)
    if num_moves == columns:
        return torch.eye(columns).view(columns, 1, columns).expand(columns, rows, columns).clone()
    raise ValueError(f"{num_moves} moves name neither the {rows * columns} cells nor the {columns} columns of a {rows}x{columns} board")
