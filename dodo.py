"""cloops build file: `doit` builds every pending story, `doit build:<id>` one story,
`doit publish:<id>` uploads one finished story.

All the logic is in the cloops package; see README.md.
"""

from cloops.steer.dodo import namespace

globals().update(namespace(__file__))
