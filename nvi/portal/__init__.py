"""The tenants' web portal (`nvi portal serve`): an aiohttp application over the directory and
the servers' agents, holding nothing of its own beyond sign-in sessions."""
