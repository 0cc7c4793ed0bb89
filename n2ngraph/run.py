"""``python -m n2ngraph.run``: the command users type. The command line itself is
``app/cli.py``; this module only gives it its short, stable name."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
