"""``python -m logitguard.cli``: the ``logitguard`` command (for ``torchrun`` and ``accelerate launch``)."""

import sys

from logitguard.cli.main import main

sys.exit(main())
