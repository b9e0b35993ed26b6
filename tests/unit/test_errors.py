"""The exception tree: every error the relay raises on purpose is a RelayError, and the
operator's mistakes (configuration, certificate, users file) are ConfigErrors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import smtprelay
from smtprelay import errors


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(smtprelay.__path__, "smtprelay."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found.append(cls)
    return found


def test_the_walk_finds_the_relays_exceptions() -> None:
    names = {cls.__qualname__ for cls in _exception_classes()}
    assert {"ConfigError", "SpoolError", "DeliveryError", "ApiProblem"} <= names


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_exception_is_a_relay_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, errors.RelayError)


def test_operator_mistakes_are_config_errors() -> None:
    from smtprelay import config, tls, usersfile
    from smtprelay.inbound import reload

    for cls in (config.ConfigError, tls.TLSError, usersfile.UsersFileError, reload.Refused):
        assert issubclass(cls, errors.ConfigError)


def test_exception_names_are_unique() -> None:
    names = [cls.__name__ for cls in _exception_classes()]
    assert len(names) == len(set(names)), sorted(names)
