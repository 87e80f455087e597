"""Adapters wrap the linear op (and the prompt methods the embedding's output): what
each finetuning method's own modules keep and hold. Each registers as an op
(``ftmem.ops.registry``)."""
