"""The user's side: profiles, the catalogue, placement, and the `nvi` commands that span
servers. Servers' processes never import it (a layer contract in pyproject.toml)."""
