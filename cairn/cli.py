"""The `cairn` command: one click group whose subcommands live with the package they drive.

Subcommands are imported lazily so that `cairn --help` does not pay for torch and hivemind,
and so that a broken optional part (say, the dashboard) cannot stop a volunteer's peer.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from cairn.extras import missing_extra_message
from cairn.protocol.errors import CairnError

# name -> "module:attribute" of the click command implementing it
SUBCOMMANDS: dict[str, str] = {
    "train": "cairn.training.cli:train",
    "embed": "cairn.training.cli:embed",
    "release": "cairn.releases.cli:release",
    "task": "cairn.tasks.cli:task",
    "peer": "cairn.peer.cli:peer",
    "swarm": "cairn.peer.swarm_cli:swarm",
    "coordinator": "cairn.coordinator.cli:coordinator",
    "dashboard": "cairn.dashboard.cli:dashboard",
    "index": "cairn.index.cli:index",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand only when it is invoked or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in SUBCOMMANDS if self._spec_available(name))

    @staticmethod
    def _spec_available(name: str) -> bool:
        module_name = SUBCOMMANDS[name].split(":")[0]
        try:
            return importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            return False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS or not self._spec_available(name):
            return None
        module_name, attribute = SUBCOMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except ModuleNotFoundError as error:
            message = missing_extra_message(name, error.name)
            if message is None:
                raise
            return _not_installed(name, message)


def _not_installed(name: str, message: str) -> click.Command:
    """A stand-in for a subcommand whose extra is missing: listed by `cairn --help`, one line when run."""

    def refuse(args: tuple[str, ...]) -> None:
        raise CairnError(message)

    return click.Command(
        name,
        callback=refuse,
        help=f"(not installed) {message}",
        add_help_option=False,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


@click.group(cls=LazyGroup)
@click.version_option(package_name="cairn-net")
def cli() -> None:
    """Cairn: train one universal text encoder together, publish it as signed releases."""


def main() -> None:
    """Entry point: run the CLI; the project's own errors become one clear line, not a traceback."""
    from cairn.network.logs import quiet_known_noise

    quiet_known_noise()
    try:
        cli.main(standalone_mode=False)
    except CairnError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except ModuleNotFoundError as error:  # an optional extra's library, imported by the command once it runs
        message = missing_extra_message(_subcommand(sys.argv[1:]), error.name)
        if message is None:
            raise
        click.echo(f"error: {message}", err=True)
        sys.exit(2)


def _subcommand(argv: list[str]) -> str | None:
    return next((arg for arg in argv if arg in SUBCOMMANDS), None)


if __name__ == "__main__":
    main()
