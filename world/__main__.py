# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""``python3 -m world``: the test world's command line (world/cli.py)."""

import sys

from .cli import main

sys.exit(main())
