"""Backups of SQLite databases, job files and Redis: consistent, checksummed, atomic.

Usable without invoke: ``sets.create`` / ``sets.verify`` / ``sets.listing`` /
``retention.plan`` / ``restore.run`` take settings and plain values.
"""
