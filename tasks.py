"""This repository's tasks: buildtasks on the example service."""

from buildtasks import namespace

ns = namespace()
