"""``python -m fastapi_tasks.journal PATH list|show|retry|stats``; see ``--help``."""

import sys

from ._cli import main

sys.exit(main())
