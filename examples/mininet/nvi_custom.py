"""NVI for `mn --custom`: `--topo nvi,N`, `--switch nvi`, `--host nvi`, `--controller nvi`.

    sudo .venv/bin/python /usr/bin/mn --custom examples/mininet/nvi_custom.py --topo nvi,3 \
        --switch nvi --host nvi --controller nvi

`mn` copies every name of this file into its own globals, so it holds only the four tables.
"""

from nvi.mininet.mn import controllers, hosts, switches, topos

__all__ = ["controllers", "hosts", "switches", "topos"]
