"""python -m benchmarks [--suite NAME] [--quick] [--config NAME] [--peers] [--out DIR] ..."""

import sys

from benchmarks.cli import main

sys.exit(main())
