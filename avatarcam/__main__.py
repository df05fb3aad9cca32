import sys

from avatarcam.cli import main

sys.exit(main())
