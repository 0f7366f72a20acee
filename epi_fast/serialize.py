"""Moved in 0.2.0 (see CHANGELOG.md); kept as an alias for one release."""
from epi_fast._compat import alias

alias(__name__)
