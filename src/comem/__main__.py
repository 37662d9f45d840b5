"""``python -m comem`` (what ``torchrun -m comem`` runs)."""

import sys

from comem.cli import main

sys.exit(main())
