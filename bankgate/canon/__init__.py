"""The canonical vocabulary every layer shares: messages and outcomes, money in fen,
masking of card and account numbers, atomic files.  Standard library only.
"""
