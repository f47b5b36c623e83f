"""The one exception type for bad configuration."""


class ConfigError(ValueError):
    """A configuration problem; the message names the key(s) and what would be valid."""
