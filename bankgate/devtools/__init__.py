"""Tools for development, demos and tests: the bank simulator, a simulated
card-debit host, demo data and a runner for twistd in a subprocess.  Imported
only by the command line, the demo wiring and the tests.
"""
