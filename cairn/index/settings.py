"""The settings of a search index, declared once: defaults, ranges and help feed both the API and `cairn index build`."""

from __future__ import annotations

import dataclasses

from cairn.protocol.settings import check_ranges, setting

ENGINES = ("hnswlib", "exact", "milvus")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """How an index is built and searched; stored in the index so that search and upgrade repeat the build's choices."""

    coarse_dims: int = setting(
        64,
        "coordinates of the coarse prefix the ANN shortlist is built on (capped at the "
        "release's K); docs/benchmarks.md section 8 shows recall and speed-up per value",
        min=1,
        max=4096,
    )
    shortlist: int = setting(
        # 800: the goal (recall@10 >= 0.95 of exact at >= 5x its speed) holds at both sizes measured, 150,000 vectors
        # (0.988 at 41x) and 1M (0.950 at 34x); 400 met it at 150,000 only (0.913 at 1M). docs/benchmarks.md section 8
        800,
        "candidates taken from the coarse prefix per query and re-ranked with all K coordinates",
        min=1,
        max=100_000,
    )
    engine: str = setting(
        "hnswlib",
        "where the coarse prefix lives: hnswlib (embedded HNSW, the measured default), exact "
        "(numpy brute force, no graph), milvus (pymilvus; a milvus-lite file or --milvus-uri)",
        choices=ENGINES,
    )
    milvus_uri: str = setting(
        "", "for --engine milvus: a Milvus server URI (http://host:19530); empty keeps a milvus-lite file inside the index"
    )
    batch_size: int = setting(
        256, "texts embedded per batch while building or upgrading (also the upgrade's resume unit)", min=1, max=65_536
    )

    def __post_init__(self) -> None:
        check_ranges(self)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: dict) -> "IndexConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in document.items() if name in names})
