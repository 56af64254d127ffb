import sys

from loadmgrctl.cli import main

sys.exit(main())
