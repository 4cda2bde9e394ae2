"""``python -m trajforge.jobs <id> --db <url>``: the process a runner starts for one job (the
command line :mod:`trajforge.procs` recognises a job's process by)."""

import sys

from trajforge.jobs.process import main

sys.exit(main())
