"""The session store: every run, session, scan and prediction of ``boed simulate`` in SQL.

    from boed.store import Store
    store = Store.open()                    # runs/boed.db, or any SQLAlchemy URL
    df = store.predictions(label="Any")     # long format, one row per (session, step, label)

The write path (writer.py) is used by the simulation; the read API (reader.py) returns pandas
DataFrames for research scripts; records.py holds the returned records and value converters,
migrate.py the schema upgrades. The schema and an example analysis are in docs/store.md.
"""

from boed.store.errors import StoreError, StoreWriteError
from boed.store.store import RunRecord, SessionRecord, Store

__all__ = ["RunRecord", "SessionRecord", "Store", "StoreError", "StoreWriteError"]
