import sys

from extmod.cli import main

sys.exit(main())
