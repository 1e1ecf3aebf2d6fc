"""Presets, shared by PPO's and MuZero's command lines: settings tuned for one env that replace the
config's field defaults, chosen by `--preset` ('auto': the env's own when it has one); any flag given on
the command line still wins, and `--help` shows the preset's values as the defaults."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections.abc import Sequence
from typing import TypeVar

import tyro

from training.errors import ConfigError
from training.resume import resume_changes

Config = TypeVar("Config")


def apply_preset(cfg: Config, presets: dict[str, dict], fallback: str, preset: str | None = None) -> Config:
    """cfg with a preset's settings (by default cfg.preset; 'auto' = cfg.env_id's preset if it has one,
    else `fallback`, the preset of the field defaults)."""
    preset = preset or cfg.preset
    if preset == "auto":
        preset = cfg.env_id if cfg.env_id in presets else fallback
    if preset not in presets:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: auto, {', '.join(presets)}")
    return dataclasses.replace(cfg, preset=preset, **copy.deepcopy(presets[preset]))  # nested options stay its own


def parse_with_presets(config_class: type[Config], presets: dict[str, dict], fallback: str, description: str,
                       changeable_on_resume: Sequence[str], argv: list[str] | None = None) -> Config:  # fmt: skip
    """Parse the command line: the preset (chosen by --preset / --env-id) supplies the defaults that
    `--help` shows, and every flag given explicitly overrides it. With --resume, the flags given are
    recorded as the changes the resumed run takes (those not in changeable_on_resume are refused there)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env-id", "--env_id", default=config_class.env_id)
    pre.add_argument("--preset", default=config_class.preset)
    known, _ = pre.parse_known_args(argv)
    defaults = apply_preset(config_class(env_id=known.env_id, preset=known.preset), presets, fallback)
    cfg = tyro.cli(config_class, args=argv, default=defaults, description=description)
    if cfg.resume:
        given = sys.argv[1:] if argv is None else argv
        cfg = dataclasses.replace(cfg, resume_changes=resume_changes(given, config_class, changeable_on_resume))
    return cfg
