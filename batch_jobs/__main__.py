import sys

from batch_jobs.cli import main

sys.exit(main())
