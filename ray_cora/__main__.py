import sys

from ray_cora.cli import main

sys.exit(main())
