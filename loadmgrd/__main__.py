import sys

from loadmgrd.daemon import main

sys.exit(main())
