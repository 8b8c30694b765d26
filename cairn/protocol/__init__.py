"""The shared contract of Cairn: encoder, tokenizer, landmark math, objective, evaluation, release format.

This package imports nothing else of ours; peer/, coordinator/ and dashboard/ import it.
"""

PROTOCOL_VERSION = 1
