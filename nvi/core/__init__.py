"""The shared core: the domain model, errors, the OVS port contract and OVSDB access, config
helpers, TLS, tokens, metrics, and the REST framework. It imports nothing else of NVI, and
every service builds on it (contracts in pyproject.toml)."""
