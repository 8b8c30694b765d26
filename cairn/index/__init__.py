"""Vector search that survives encoder upgrades: `cairn index` and its Python API.

    from cairn.index import build_index, open_index, upgrade_index

    index = build_index("releases/1.0.0", "articles.jsonl", "articles.idx")   # or a Documents, an IndexConfig
    hits = index.search("a domesticated carnivorous mammal", k=10)             # [{"id", "text", "metadata", "score", "row"}]
    hits = index.search("a domesticated carnivorous mammal", release="releases/1.1.0")  # a newer release, no re-embedding
    upgrade_index("articles.idx", "releases/1.1.0")                             # re-embed in resumable batches, switch atomically

Modules, one job each: `settings` (IndexConfig), `documents` (reading data files), `store` (texts in SQLite),
`embedding` (texts to vectors, the append-only rule), `engines` (the coarse shortlist: hnswlib, exact, milvus),
`files` (atomic writes), `meta` (index.json), `index` (open and search), `build`, `upgrade`, `server`, `cli`.
"""

from cairn.index.build import build_index
from cairn.index.documents import Documents, read_documents
from cairn.index.index import SearchIndex, open_index
from cairn.index.settings import IndexConfig
from cairn.index.upgrade import upgrade_index

__all__ = ["Documents", "IndexConfig", "SearchIndex", "build_index", "open_index", "read_documents", "upgrade_index"]
