"""``python -m equifast.benchmark`` = ``python -m equifast bench``."""
import sys

from .cli import main

sys.exit(main())
