"""``python -m ref_assets.cli``: the same as ``ref-assets``."""

import sys

from ref_assets.cli.main import main

sys.exit(main())
