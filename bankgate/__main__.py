"""``python -m bankgate``: the ``bankgate`` command."""

import sys

from bankgate.app.cli import main

sys.exit(main())
