"""The operator console (``docs/console.rst``): a web face served by the gateway itself.

:mod:`~bankgate.app.console.server` is the site (resource tree, sign-in, sessions,
CSRF, the service that listens), :mod:`~bankgate.app.console.auth` the accounts and
their safety; the pages (overview, help desk) and the monitoring endpoints
(``/healthz``, ``/metrics``) are plain ``twisted.web`` resources mounted into it.
"""
