"""The REST API: validates input, talks to the store and to the owning node. No sockets."""
