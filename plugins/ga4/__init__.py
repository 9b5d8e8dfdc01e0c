"""Placeholder until this destination is written."""

from eventd import Destination, hookimpl


@hookimpl
def eventd_destinations() -> list[type[Destination]]:
    return []
