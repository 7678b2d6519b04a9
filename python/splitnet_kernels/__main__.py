"""python -m splitnet_kernels: the same as the splitnet-kernels command."""

import sys

from .cli import main

sys.exit(main())
