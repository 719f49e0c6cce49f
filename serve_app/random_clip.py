"""Moved to :mod:`serve_app.models.random_clip` (the model package); kept so old imports keep working."""

from serve_app.models.random_clip import *  # noqa: F401,F403
from serve_app.models.random_clip import RANDOM_WEIGHTS_MARKER, SIZES, make_random_clip  # noqa: F401
