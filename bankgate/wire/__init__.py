"""Bytes on sockets: framing, the bank listeners, the outbound card-debit link and
fetching statement files.  It knows the codec interface and the canonical
messages; the handlers it calls are injected.
"""
