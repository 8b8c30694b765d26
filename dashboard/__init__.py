"""dashboard role of Cairn; imports protocol/ only."""
