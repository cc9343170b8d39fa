import sys

from cantainer.cli import main

sys.exit(main())
