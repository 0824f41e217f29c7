"""Integrations with other libraries, each imported lazily: ``vaefast.integrations.diffusers``."""
