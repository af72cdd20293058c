"""`python -m xdprx ...`: the `xdprx` command without the installed script."""
import sys

from .service.cli import main

sys.exit(main())
