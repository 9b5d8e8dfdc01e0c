"""Every hook eventd calls. A plugin module implements them with ``@hookimpl``.

pluggy is synchronous, so hooks only *register* things (return destination
classes and transform functions); eventd then calls and awaits them directly.
"""

from __future__ import annotations

import pluggy

from eventd.destination import Destination
from eventd.transform import Transform

hookspec = pluggy.HookspecMarker("eventd")
hookimpl = pluggy.HookimplMarker("eventd")


@hookspec
def eventd_destinations() -> list[type[Destination]]:  # type: ignore[empty-body]
    """Return the destination classes this plugin provides."""


@hookspec
def eventd_transforms() -> dict[str, Transform]:  # type: ignore[empty-body]
    """Return the transforms this plugin provides, by the name a config uses."""
