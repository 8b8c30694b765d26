"""Texts given on a command line: arguments plus, optionally, a UTF-8 file with one text per line."""

from __future__ import annotations

from pathlib import Path

from cairn.protocol.errors import CairnError


def gather_texts(texts: tuple[str, ...] | list[str], text_file: Path | None) -> list[str]:
    """Arguments first, then the file's non-blank lines; nothing at all is a one-line error."""
    lines = list(texts)
    if text_file is not None:
        try:
            lines += [line for line in Path(text_file).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise CairnError(f"{text_file}: cannot read texts ({error.__class__.__name__})") from None
    if not lines:
        raise CairnError("no texts given: pass TEXT arguments or --file")
    return lines
