"""peewee field types shared by the box's store and the upstream's (SQLite or PostgreSQL)."""

from __future__ import annotations

import json

import peewee as pw


class JSONField(pw.TextField):
    """A JSON value in a text column, written with sorted keys (so equal values compare
    equal as text); None is SQL NULL."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)
