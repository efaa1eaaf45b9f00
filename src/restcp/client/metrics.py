"""``GET /metrics`` read back: the Prometheus text, parsed by prometheus_client's own parser
into metric families and their samples."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Metrics:
    """A node's metrics at one moment: ``families`` by name (``restcp_connections``), and
    ``value()`` to read a sample (``restcp_connections_total``) by its labels."""

    families: dict[str, Metric]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        return cls({family.name: family for family in text_string_to_metric_families(text)})

    def samples(self, name: str | None = None) -> Iterator[Sample]:
        """Every sample, or those named ``name``."""
        for family in self.families.values():
            for sample in family.samples:
                if name is None or sample.name == name:
                    yield sample

    def value(self, name: str, **labels: str | int) -> float:
        """The sum of the samples named ``name`` that carry all of ``labels``; 0.0 if none
        does (a counter not yet counted). ``value("restcp_connections_total", app="web")``
        counts every connection of app web's routes."""
        wanted = {key: str(value) for key, value in labels.items()}
        return sum(
            sample.value for sample in self.samples(name) if wanted.items() <= sample.labels.items()
        )
