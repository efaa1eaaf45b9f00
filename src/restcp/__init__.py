"""restcp: a REST-driven TCP proxy and layer-4 load balancer."""

__version__ = "0.1.0"
