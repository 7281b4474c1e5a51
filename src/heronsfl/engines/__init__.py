"""Engines drive algorithms: in-process simulation (default) and, later, networked deployment."""
