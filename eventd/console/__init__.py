"""The web console: sign-in, overview, live debugger, dead letters, profiles, reports.

A feature room that arrives through eventd's hooks like a third-party plugin
(:mod:`eventd.console.plugin`, in the ``eventd.plugins`` entry-point group). Its
pages read and change data only through the admin API (``/admin/*``), which accepts
the console's session cookie (:func:`eventd.console.session.admin_session_ok`).
"""
