"""``python -m bankgate.app.cli``: the ``bankgate`` command."""

import sys

from bankgate.app.cli import main

sys.exit(main())
