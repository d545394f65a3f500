"""Role mappings: which cloud target a Zuplo deployment may obtain credentials for."""
