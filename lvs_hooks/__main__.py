"""`python -m lvs_hooks`: the same entry point as the lvs-hooks script (the doors first)."""

import sys

from lvs_hooks.door import main

sys.exit(main())
