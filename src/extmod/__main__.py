import sys

from extmod.ui.cli import main

sys.exit(main())
