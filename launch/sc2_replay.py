"""Open a StarCraft II replay in pysc2's replay viewer: `python launch/sc2_replay.py --replay FILE.SC2Replay`.

The same as `python -m pysc2.bin.play --replay FILE`, which fails on Python 3.11 with current protobuf,
with envs.sc2_compat's fixes applied first. Every pysc2 play flag works (--norender, --video, --fps, ...).
"""

from __future__ import annotations

import sys

from envs.sc2 import SC2NotFoundError, check_game_installed
from envs.sc2_compat import SC2NotInstalledError, apply


def main() -> int:
    try:
        apply()
        check_game_installed(None)
    except (SC2NotInstalledError, SC2NotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from absl import app
    from pysc2.bin import play

    app.run(play.main)  # parses pysc2's flags from sys.argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
