"""Every numeric option of every `cairn` command has a range (issue 18): a careless number is one `error:`-style
usage line and exit 2 before anything starts, not a traceback half a minute later."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from cairn.cli import cli


def _commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, click.Context(command, parent=ctx, info_name=name), (*prefix, name))
        else:
            yield (*prefix, name), command


def _numeric_options():
    ctx = click.Context(cli, info_name="cairn")
    for path, command in _commands(cli, ctx):
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
                yield " ".join(path), param


def test_every_numeric_option_has_a_range():
    unbounded = [
        f"cairn {path} {param.opts[0]}"
        for path, param in _numeric_options()
        if not isinstance(param.type, (click.IntRange, click.FloatRange)) or (param.type.min is None and param.type.max is None)
    ]
    assert not unbounded, "numeric options without a range:\n" + "\n".join(unbounded)


# commands whose --batch-size is how many texts to embed at once (inference: 1 is a valid, if slow, choice)
EMBEDDING_BATCHES = {"index build", "index upgrade"}


def test_every_batch_size_needs_two_pairs():
    """InfoNCE with one pair has no negative: `--batch-size 1` trained nothing and reported a loss of 0.000."""
    batch_options = [(path, param) for path, param in _numeric_options() if param.name == "batch_size" and path not in EMBEDDING_BATCHES]
    assert {path for path, _ in batch_options} >= {"train", "coordinator init", "peer run", "swarm"}
    for path, param in batch_options:
        assert param.type.min == 2, (path, param.type)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--batch-size", "0"],
        ["train", "--batch-size", "1"],
        ["coordinator", "init", "--workdir", "unused", "--batch-size", "0"],
        ["peer", "run", "--join", "/ip4/127.0.0.1/tcp/1/p2p/QmUnused", "--batch-size", "1"],
        ["peer", "run", "--join", "/ip4/127.0.0.1/tcp/1/p2p/QmUnused", "--port", "70000"],
        ["coordinator", "run", "--workdir", "unused", "--release-every", "-1"],
    ],
)
def test_out_of_range_numbers_are_refused_at_once(argv, tmp_path):
    result = subprocess.run([sys.executable, "-m", "cairn.cli", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Invalid value" in result.stderr, result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be created for a refused command"
