import sys

from pipeline.report.stage import main

sys.exit(main())
