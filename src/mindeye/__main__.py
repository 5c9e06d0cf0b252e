import sys

from mindeye.cli import main

sys.exit(main())
