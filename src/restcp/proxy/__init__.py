"""The data plane: listeners, connections and their pipes on asyncio (docs/design.md)."""
