"""The exposition of a scrape: prometheus_client's text formats, written faster for the
families that hold one sample per tunnel.

prometheus_client formats every sample on its own: it sorts and escapes the sample's
labels and formats its value each time, ~3-6 µs a sample on a gateway's CPU. At 1,000
tunnels a scrape holds ~16,000 per-tunnel samples whose ~3,000 distinct label sets are
shared (one dict per tunnel and direction, metrics.families), so that is 50-100 ms of a
scrape spent formatting the same label strings again and again. Here a label set is
formatted once per scrape (``LabelSets``), and each distinct integer value once.

What is written is the library's, byte for byte (tests/unit/test_exposition.py renders the
same registry both ways, in both formats): the library still writes every family's HELP
and TYPE lines and every family but the per-tunnel ones (``ColumnFamily``: plain gauges and
counters, no timestamps, exemplars or OpenMetrics suffixes); only their sample lines are
written here, with the library's own value formatting (floatToGoString) and label
escaping. The format is the library's choice for the request
(``choose_encoder``: OpenMetrics when the scraper asks for it, else text 0.0.4).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OM_CONTENT_TYPE
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

_OM_EOF = "# EOF\n"


class _One:
    """A registry of one metric, as the library's encoders take it."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


def _labels(labels: dict[str, str]) -> str:
    """``{k="v",...}`` as both of the library's encoders write it (sorted, escaped)."""
    if not labels:
        return ""
    return "{" + ",".join(
        '{}="{}"'.format(k, v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\""))
        for k, v in sorted(labels.items())) + "}"


class LabelSets:
    """The label sets of one scrape's per-tunnel families, in sample order, each rendered
    once (when first written) for every family that uses it."""

    def __init__(self, dicts: list[dict[str, str]]) -> None:
        self.dicts = dicts
        self._strs: list[str] | None = None

    @property
    def strs(self) -> list[str]:
        if self._strs is None:
            self._strs = [_labels(d) for d in self.dicts]
        return self._strs


class ColumnFamily(Metric):
    """A gauge or counter family of one sample per label set (a column of the tunnels'
    table): ``values[i]`` under ``labels.dicts[i]``, None for no sample. ``encode`` writes
    its lines from the rendered label sets; to anything else (the library's encoders, a
    ``name[]`` filter) it is an ordinary family whose samples are made when read."""

    def __init__(self, name: str, documentation: str, typ: str, labels: LabelSets,
                 values: list[Any]) -> None:
        super().__init__(name, documentation, typ)
        self.labels = labels
        self.values = values
        self.sample_name = name + "_total" if typ == "counter" else name

    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        return [Sample(self.sample_name, d, v, None, None)
                for d, v in zip(self.labels.dicts, self.values, strict=True) if v is not None]

    @samples.setter
    def samples(self, _value: list[Sample]) -> None:  # Metric.__init__ sets it empty
        pass

    def lines(self, values: dict[int, str]) -> list[str]:
        name = self.sample_name
        return [f"{name}{lbl} {_value(v, values)}\n"
                for lbl, v in zip(self.labels.strs, self.values, strict=True) if v is not None]


def _value(v: Any, cache: dict[int, str]) -> str:
    """floatToGoString, once per distinct integer of a scrape (not for floats: -0.0 == 0.0
    but is written apart)."""
    if type(v) is int:
        got = cache.get(v)
        if got is None:
            got = cache[v] = floatToGoString(v)
        return got
    return floatToGoString(v)


def _library(encoder: Callable[[Any], bytes], metric: Metric, openmetrics: bool) -> str:
    text = encoder(_One(metric)).decode("utf-8")
    return text.removesuffix(_OM_EOF) if openmetrics else text


def encode(metrics: Iterable[Metric], encoder: Callable[[Any], bytes],
           openmetrics: bool) -> bytes:
    """The exposition of ``metrics`` in the format of ``encoder`` (one of the library's
    two, as ``choose_encoder`` gave it), as that encoder writes it."""
    out: list[str] = []
    values: dict[int, str] = {}
    for metric in metrics:
        if not isinstance(metric, ColumnFamily):  # a few samples: the library's own
            out.append(_library(encoder, metric, openmetrics))
            continue
        header = Metric(metric.name, metric.documentation, metric.type)
        out.append(_library(encoder, header, openmetrics))
        out.extend(metric.lines(values))
    if openmetrics:
        out.append(_OM_EOF)
    return "".join(out).encode("utf-8")


def make_app(registry: CollectorRegistry) -> Callable[..., Any]:
    """A WSGI app serving ``registry`` as the library's ``make_wsgi_app`` does (format by
    the Accept header, ``name[]`` filters, gzip when accepted), written by ``encode``
    and compressed faster."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        params = parse_qs(environ.get("QUERY_STRING", ""))
        reg: Any = registry
        if "name[]" in params:
            reg = registry.restricted_registry(params["name[]"])
        body = encode(reg.collect(), encoder, content_type == OM_CONTENT_TYPE)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            # Level 1, not the library's 9: at 1,000 tunnels 9 takes ~33 ms of a scrape
            # for 88 KiB, 1 takes ~5 ms for 94 KiB (Prometheus asks for gzip every time).
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app
