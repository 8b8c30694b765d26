"""coordinator role of Cairn; imports protocol/ only."""
