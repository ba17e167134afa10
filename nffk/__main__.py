"""`python -m nffk ...` is the `nffk` command (handy where the console script is not on PATH)."""
import sys

from nffk.cli import main

sys.exit(main())
