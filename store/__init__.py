"""The Arrow/Parquet store: the only package that knows the store's paths, schema and
commit protocol. ``Store`` opens and reads a store, ``RunWriter`` writes one run's life.
See docs/store.md."""

from store.files import DamagedFile, StoreError
from store.schema import SCHEMA_VERSION
from store.store import RunHealth, Store, now
from store.writer import RunWriter

__all__ = ["DamagedFile", "RunHealth", "RunWriter", "SCHEMA_VERSION", "Store", "StoreError", "now"]
