"""Pairs from a Hugging Face `datasets` dataset, streamed (no full download) up to a limit.

Works offline on local files through the generic builders, e.g. name="json" with data_files.
"""

from __future__ import annotations

from cairn.corpora.base import Pair, PairCorpus
from cairn.corpora.jsonl import pair_from_record, split_pairs
from cairn.protocol.errors import CorpusError


def load_hf(name: str, columns: tuple[str, str], split: str = "train", data_files: str | None = None, limit: int = 1_000_000) -> PairCorpus:
    import datasets

    datasets.disable_progress_bars()
    source = data_files or name
    try:
        stream = datasets.load_dataset(name, data_files=data_files, split=split, streaming=True)
        pairs: list[Pair] = []
        for number, record in enumerate(stream, start=1):
            pairs.append(pair_from_record(record, columns, f"{source} row {number}"))
            if len(pairs) >= limit:
                break
    except CorpusError:
        raise
    except StopIteration:  # the json builder infers its schema from the first rows: there are none
        raise CorpusError(f"{source}: corpus is empty (no rows)") from None
    except FileNotFoundError as error:
        raise CorpusError(f"{source}: not found ({str(error).splitlines()[0]})") from None
    except UnicodeDecodeError as error:
        raise CorpusError(f"{source}: not UTF-8 (invalid byte at offset {error.start})") from None
    except Exception as error:  # datasets wraps parser errors in many types; report one line
        message = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise CorpusError(f"{source}: could not read dataset ({message})") from None
    return split_pairs(f"hf:{name}:{source}", pairs, source)
