import sys

from maae.cli import main

sys.exit(main())
