"""The admin API (``/admin/*``, ``/metrics``): reads the Store and
``Dispatcher.status()``, asks the Dispatcher for redrives and replays; never SQL,
never a worker's fields. ``api.py`` holds the routes, ``params.py`` request parsing.
"""

from eventd.admin.api import Admin
from eventd.admin.params import BadRequest, parse_time

__all__ = ["Admin", "BadRequest", "parse_time"]
