"""Redis bridges, sharing one client per URL."""
