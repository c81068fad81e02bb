"""``python -m flowaction`` (as ``torchrun -m flowaction train ...`` starts it)."""
import sys

from flowaction.cli import main

sys.exit(main())
