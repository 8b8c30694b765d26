"""peer role of Cairn; imports protocol/ only."""
