"""The database: one private thread pool, the dialect quirks, every table the
gateway owns, the mapping onto N8, one module of SQL per domain, migrations.
It returns plain values and knows no bank.
"""
