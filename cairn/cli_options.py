"""The option groups of the commands that start training: `cairn train`, `cairn coordinator init`, `cairn swarm`.

All three take the same training settings, generated from TrainingConfig and ObjectiveConfig (cairn/protocol/settings.py),
so a default changed in the dataclass changes every command, and a run started by `cairn swarm` trains exactly
like `cairn train` with the same flags.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from cairn.protocol.run_config import ObjectiveConfig
from cairn.protocol.settings import config_option, split_settings
from cairn.protocol.run_config import SwarmConfig
from cairn.protocol.run_config import TrainingConfig

TRAINING_FIELDS = (
    "model",
    "initialisation",
    "vocabulary",
    "batch_size",
    "lr",
    "weight_decay",
    "start_pull",
    "warmup_updates",
    "landmarks",
    "landmark_order",
    "anchor_refresh_every",
    "seed",
)
OBJECTIVE_FIELDS = ("relational_weight", "absolute_weight", "temperature", "relational_temperature")
SWARM_FIELDS = (
    "target_batch_size",
    "compression",
    "num_shards",
    "lease_seconds",
    "averaging_timeout",
    "matchmaking_time",
    "outer_matchmaking_time",
    "matchmaking_quorum",
    "averaging",
    "outer_every",
    "outer_lr",
    "outer_topk",
    "outer_overlap",
    "aggregation",
)
OPTION_NAMES = {"num_shards": "--shards"}


def _apply(decorators: list[Callable], function: Callable) -> Callable:
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def training_options(function: Callable) -> Callable:
    """--model, --initialisation, --vocabulary, --batch-size, --lr, ... and the objective's weights."""
    return _apply(
        [config_option(TrainingConfig, name) for name in TRAINING_FIELDS]
        + [config_option(ObjectiveConfig, name) for name in OBJECTIVE_FIELDS],
        function,
    )


def swarm_options(function: Callable) -> Callable:
    """--target-batch-size, --compression, --shards, --lease-seconds, --averaging-timeout, --matchmaking-time,
    --outer-matchmaking-time, --matchmaking-quorum, --averaging, --outer-every, --outer-lr, --outer-topk, --outer-overlap, --aggregation."""
    return _apply(
        [config_option(SwarmConfig, name, *((OPTION_NAMES[name],) if name in OPTION_NAMES else ())) for name in SWARM_FIELDS], function
    )


def training_config(settings: dict) -> TrainingConfig:
    """A TrainingConfig from the options of `training_options` (any other keys are an error)."""
    training, objective = split_settings(settings, TrainingConfig, ObjectiveConfig)
    return TrainingConfig(**training, objective=ObjectiveConfig(**objective))


def run_settings(settings: dict) -> tuple[TrainingConfig, SwarmConfig]:
    """(TrainingConfig, SwarmConfig) from the options of `training_options` and `swarm_options`; options that are each
    in range but do not go together (`--outer-topk` with `--aggregation trimmed_mean`) are a usage error."""
    training, objective, swarm = split_settings(settings, TrainingConfig, ObjectiveConfig, SwarmConfig)
    try:
        return TrainingConfig(**training, objective=ObjectiveConfig(**objective)), SwarmConfig(**swarm)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def init_arguments(settings: dict) -> list[str]:
    """The `cairn coordinator init` arguments that reproduce these training and swarm settings exactly."""
    arguments: list[str] = []
    for name, value in settings.items():
        flag = OPTION_NAMES.get(name, f"--{name.replace('_', '-')}")
        if isinstance(value, bool):  # a setting's bool option takes a value (click.BOOL), it is not a flag
            arguments += [flag, "true" if value else "false"]
        else:
            arguments += [flag, repr(value) if isinstance(value, float) else str(value)]
    return arguments


def passphrase_option(function: Callable) -> Callable:
    """--passphrase-file: the passphrase of the root and targets keys (else $CAIRN_KEY_PASSPHRASE; neither: plain keys).

    One option for every command that writes or uses a signing key, so `init`, `run`, `extend-landmarks` and the
    `keys` group read the passphrase from the same places in the same order (cairn.coordinator.publishing.keys).
    """
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="file holding the passphrase of the root and targets keys (else $CAIRN_KEY_PASSPHRASE; "
        "neither: keys are written unencrypted, for a development run)",
    )(function)


def key_passphrase(passphrase_file: Path | None) -> bytes | None:
    """The passphrase `passphrase_option` names, else $CAIRN_KEY_PASSPHRASE, else None."""
    from cairn.coordinator.publishing.keys import read_passphrase

    return read_passphrase(passphrase_file)
