"""Every hook eventd calls. A plugin module implements them with ``@hookimpl``.

pluggy is synchronous, so hooks only *register* things (return destination
classes); eventd then awaits their methods directly.
"""

from __future__ import annotations

import pluggy

from eventd.destination import Destination

hookspec = pluggy.HookspecMarker("eventd")
hookimpl = pluggy.HookimplMarker("eventd")


@hookspec
def eventd_destinations() -> list[type[Destination]]:  # type: ignore[empty-body]
    """Return the destination classes this plugin provides."""
