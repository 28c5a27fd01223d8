"""``python -m simq_conformance.mutants``: the kill matrix (see :mod:`.matrix`)."""

import sys

from simq_conformance.mutants.matrix import main

sys.exit(main())
