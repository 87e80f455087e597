"""The ops a block is made of, one class each, registered by name (``ops.registry``).

The package imports nothing itself: the op modules import each other and the adapters
(which wrap the linear op), and ``registry.get`` loads them all on first use.
"""
