import pytest

from buildtasks.docker.dockerfile import base_images, instructions, mirror_contexts, registry_of

MULTI_STAGE = """\
# comment
ARG PYTHON_IMAGE=python:3.11-slim
ARG TOOLS=busybox:1.36
FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS deps
RUN echo \\
    continued
FROM deps AS compile
FROM $TOOLS as tools
FROM scratch AS empty
FROM ${PYTHON_IMAGE}
COPY --from=compile /app /app
"""


def test_instructions_join_continuations_and_drop_comments():
    assert instructions("FROM a\n# note\nRUN x \\\n  # inside\n  y\n") == [
        ("FROM", "a"),
        ("RUN", "x  y"),
    ]


def test_base_images_resolve_arg_defaults_skip_stages_and_scratch():
    assert base_images(MULTI_STAGE) == ["python:3.11-slim", "busybox:1.36"]


def test_build_args_override_arg_defaults():
    assert base_images(MULTI_STAGE, {"PYTHON_IMAGE": "python:3.12"}) == [
        "python:3.12",
        "busybox:1.36",
    ]


def test_mirror_contexts_map_every_base_image():
    images = base_images(MULTI_STAGE)
    assert mirror_contexts(images, "127.0.0.1:5000/mirror/") == {
        "python:3.11-slim": "docker-image://127.0.0.1:5000/mirror/python:3.11-slim",
        "busybox:1.36": "docker-image://127.0.0.1:5000/mirror/busybox:1.36",
    }
    assert mirror_contexts(images, "") == {}


@pytest.mark.parametrize(
    ("image", "named"),
    [
        ("redis:7", False),
        ("library/redis:7", False),
        ("bitnami/redis:7", False),
        ("127.0.0.1:5000/app:1", True),
        ("registry.example.com/team/app", True),
        ("localhost/app", True),
        ("ghcr.io/org/app@sha256:" + "a" * 64, True),
    ],
)
def test_only_images_of_the_default_registry_come_through_the_mirror(image, named):
    assert bool(registry_of(image)) is named
    assert bool(mirror_contexts([image], "127.0.0.1:5000/mirror")) is not named
