"""``python -m recorder.cli``: the ``linetap`` console script without installing it."""

import sys

from recorder.cli.main import main

sys.exit(main())
