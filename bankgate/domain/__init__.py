"""The business rules: the ledger, invoices, withholding, card debits and
reconciliation.  Plain Python over the store; it never sees a byte of a bank's
format, never reads the configuration and never touches the reactor.
"""
