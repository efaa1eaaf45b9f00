"""Active health checks: probes that feed the rise/fall machine of core.health."""
