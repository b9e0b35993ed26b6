"""Commands made of actions (``smtprelay user add``, ``dkim keygen``, ``queue flush``):
one way to declare them for every module that adds commands to the parser of cli.py."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


class Actions:
    """The actions of the command ``name``. Each takes the options every command takes
    (``common``: ``-c``) and those of ``parents``; its ``handler`` runs it."""

    def __init__(
        self,
        commands: Any,
        common: argparse.ArgumentParser,
        name: str,
        help: str,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> None:
        command = commands.add_parser(name, parents=[common], help=help)
        self._actions = command.add_subparsers(metavar="ACTION", required=True)
        self._parents = [common, *parents]

    def add(
        self, name: str, help: str, handler: Callable[..., int], **defaults: Any
    ) -> argparse.ArgumentParser:
        """The parser of the action ``name``, for its own arguments."""
        action: argparse.ArgumentParser = self._actions.add_parser(
            name, parents=self._parents, help=help
        )
        action.set_defaults(handler=handler, **defaults)
        return action
