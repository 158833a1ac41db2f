"""The plugin SDK: what a bank codec implements (:mod:`bankgate.codec.base`) and
the optional capabilities it may declare (:mod:`bankgate.codec.capabilities`),
the field types, the ISO 8583 machinery, crypto, the plugin registry and
``bankgate plugins check``.  Knows the canonical messages, nothing else of
the gateway.
"""
