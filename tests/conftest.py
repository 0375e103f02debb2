"""Suite-wide pytest settings. Fixtures belong next to the tests that use them."""

from __future__ import annotations

from hypothesis import settings

# Property tests are judged on their results, not their speed: a loaded CI machine
# must not turn a slow example into a failure (timing goes in bench/).
settings.register_profile("tou", deadline=None)
settings.load_profile("tou")
