"""What a flag given with `--resume` does: a run continues with the settings it was started with, except
the few that are safe to change mid-run (its length, where it computes, how often it saves and
evaluates), which apply; any other flag is refused with one line, never silently ignored."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from training.errors import ConfigError


def given_fields(argv: Sequence[str], config_class: type) -> list[str]:
    """The config fields named by the flags on a command line (`--total-timesteps 5`, `--x=1`,
    `--no-progress`, `--sc2.screen-size 32` -> total_timesteps, x, progress, sc2), in their order."""
    names = {f.name for f in dataclasses.fields(config_class)}
    found: list[str] = []
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].split(".", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_") and name[3:] in names:
            name = name[3:]
        if name in names and name not in found:
            found.append(name)
    return found


def resume_changes(argv: Sequence[str], config_class: type, changeable: Sequence[str]) -> tuple[str, ...]:
    """The fields that `argv`, a command line with --resume, changes in the resumed run; a ConfigError
    naming the first flag that may not change (and the ones that may) when there is one."""
    changes = []
    for name in given_fields(argv, config_class):
        if name == "resume":
            continue
        if name not in changeable:
            flag = "--" + name.replace("_", "-")
            allowed = ", ".join("--" + c.replace("_", "-") for c in changeable)
            raise ConfigError(
                f"{flag} with --resume: a resumed run keeps the settings it was started with (start a new run "
                f"to change {flag}); with --resume you may give {allowed}"
            )
        changes.append(name)
    return tuple(changes)


def apply_resume_changes(saved: Any, given: Any) -> Any:
    """The saved config, continued by the config `given` (with its `resume` set): the device and progress
    bar of this invocation, and the fields that its command line changes (`given.resume_changes`)."""
    changes = {name: getattr(given, name) for name in ("device", "progress", *given.resume_changes)}
    return dataclasses.replace(saved, **changes, resume=given.resume, resume_changes=given.resume_changes)
