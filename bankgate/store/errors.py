"""The store's exceptions, apart so every store module can raise them."""


class StoreUnavailable(Exception):
    """The database could not be reached or kept failing: answer BUSY."""


class N8Unavailable(StoreUnavailable):
    """N8's own database ([n8.database]) could not be reached, or its commit
    failed after the gateway's: answer BUSY; the repair job finishes the rest."""


class Retry(Exception):
    """Raised inside a transaction to run it again from the start."""
