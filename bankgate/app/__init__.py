"""The application: configuration, the one wiring function that builds the store,
ledger and hooks, the twistd service and its schedulers, and the command line.
The only layer that reads the configuration or names a plugin.
"""
