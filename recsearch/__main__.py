import sys

from recsearch.cli import main

sys.exit(main())
