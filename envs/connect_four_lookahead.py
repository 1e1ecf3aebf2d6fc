"""Connect Four's lookahead search, compiled with numba (imported by envs.board_games.lookahead_moves
when it is first used, so that processes which never call it do not pay numba's import). Bitboards as in
envs.board_games: bit column * 7 + row from the bottom, a spare bit on top of each column."""

from __future__ import annotations

import numba

ROWS, COLUMNS = 6, 7  # envs.board_games' board (not imported from there: it imports this module)
_HEIGHT = ROWS + 1  # bits per column: the rows and a spare one on top


@numba.njit(cache=True)
def has_four(discs: int) -> bool:
    for shift in (1, _HEIGHT, _HEIGHT - 1, _HEIGHT + 1):  # vertical, horizontal, the two diagonals
        pairs = discs & (discs >> shift)
        if pairs & (pairs >> 2 * shift):
            return True
    return False


@numba.njit(cache=True)
def lookahead_value(mine: int, occupied: int, plies: int) -> int:
    """The mover's result when both sides look `plies` moves ahead: +1 a win they can force, -1 a loss
    the opponent can force, 0 neither (or a full board). Compiled: a 4-ply look visits ~17k positions."""
    if plies == 0:
        return 0
    legal = 0
    for column in range(COLUMNS):
        if not occupied & (1 << (column * _HEIGHT + ROWS - 1)):  # the column's top cell is free
            legal += 1
            after = occupied | (occupied + (1 << column * _HEIGHT))
            if has_four((mine ^ occupied) ^ after):  # the mover's discs after the move
                return 1
    if legal == 0:
        return 0
    best = -1
    for column in range(COLUMNS):
        if not occupied & (1 << (column * _HEIGHT + ROWS - 1)):
            after = occupied | (occupied + (1 << column * _HEIGHT))
            best = max(best, -lookahead_value(mine ^ occupied, after, plies - 1))
            if best == 1:
                break
    return best
