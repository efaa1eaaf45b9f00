"""The data plane: listeners and relays on asyncio. Imports only core and model."""
