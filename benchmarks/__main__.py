"""python -m benchmarks [--quick] [--config NAME] [--dtype D] [--device D] [--out DIR] ..."""

import sys

from benchmarks.cli import main

sys.exit(main())
