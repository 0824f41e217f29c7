"""Performance tools: `vaefast profile` and `vaefast bench`."""
