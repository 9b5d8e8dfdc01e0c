"""Delivery: the stored log to every destination, each at its own pace.

``dispatcher.py`` starts a worker per destination and answers for them
(status, redrive, replay); ``worker.py`` orchestrates one destination's
delivery; ``routing.py`` decides where an event goes; ``settle.py`` is the retry
policy; ``deadletters.py`` writes what is given up on; ``aside.py`` is the
redrive/replay loop; ``ratelimit.py`` and ``transform.py`` are what their names say.

Import the modules themselves (``from eventd.delivery.dispatcher import
Dispatcher``): this package imports nothing, so a plugin that needs only
``Transform`` does not load the dispatcher.
"""
