"""The shipped bank message plugins, one file per message specification.

Installed as the package ``bankgate_plugins``; the gateway loads each file
through :mod:`bankgate.codec.registry`, always under the module name
``bankgate_plugins.<file name>``.  Bank formats only: a plugin imports
:mod:`bankgate.canon` and :mod:`bankgate.codec`, nothing else of the gateway.
"""
