"""NVI on Mininet, for researchers: topologies whose servers are NVI servers (top layer: nothing
in NVI imports it)."""
