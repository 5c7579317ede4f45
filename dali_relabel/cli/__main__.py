"""``python -m dali_relabel.cli``: the ``dali-relabel`` command."""

import sys

from dali_relabel.cli import main

sys.exit(main())
