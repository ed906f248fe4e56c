"""cloops build file: `doit` builds every pending story, `doit build:<id>` one story.

All the logic is in the cloops package; see README.md.
"""

from cloops.run.dodo import namespace

globals().update(namespace(__file__))
