"""jobsvc: the example service buildtasks builds, ships and backs up.

An HTTP jobs API and a queue worker; jobs persist in SQLite, results as files under
``data/jobs/<id>/``; the queue is Redis when REDIS_URL is set, else the database itself.
"""

__version__ = "0.1.0"
