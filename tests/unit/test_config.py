import json
import tempfile
import tomllib
import typing
from pathlib import Path

import pytest
import tomlkit
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from invoke import Config, Context

from buildtasks import config, listing
from buildtasks.config import CHECKS, DEFAULT_TAGS, Target
from buildtasks.errors import ConfigError
from buildtasks.tasks import collection
from buildtasks.tasks.common import runtime

REPO = Path(__file__).resolve().parents[2]
_SCHEMA = (
    config.Settings,
    config.Target,
    config.ProtoSettings,
    config.StackSettings,
    config.BackupSettings,
    config.OffsiteSettings,
    config.ReleaseSettings,
    config.CacheSettings,
)


def write_project(tmp_path: Path, body: str, env: str | None = None) -> Path:
    (tmp_path / "pyproject.toml").write_text(body)
    if env is not None:
        (tmp_path / ".env").write_text(env)
    return tmp_path


def test_defaults_and_targets(tmp_path):
    root = write_project(
        tmp_path,
        """
[project]
name = "svc"
version = "1.2.3"
[tool.buildtasks]
context = "app"
[tool.buildtasks.targets.prod]
dockerfile = "Dockerfile.prod"
platforms = ["linux/amd64", "linux/arm64"]
build_args = { PYTHON = "3.11" }
[tool.buildtasks.targets.dev]
""",
    )
    settings = config.load(root)
    assert settings.image == "svc"
    assert settings.version == "1.2.3"
    assert settings.context_of(settings.targets["dev"]) == root / "app"
    assert settings.targets["prod"] == Target(
        name="prod",
        dockerfile="Dockerfile.prod",
        platforms=("linux/amd64", "linux/arm64"),
        build_args={"PYTHON": "3.11"},
    )
    assert settings.targets["prod"].enabled_checks == CHECKS
    assert settings.targets["dev"].enabled_checks == ()
    assert settings.targets["dev"].tags == DEFAULT_TAGS


def test_interpolation_environment_wins_over_env_file(tmp_path, monkeypatch):
    root = write_project(
        tmp_path,
        """
[tool.buildtasks]
image = "${REGISTRY}/svc"
mirror = "${MIRROR:-mirror.local/m}"
version = "${VERSION:-0.0.0}"
source = "cost: $$5"
""",
        env="REGISTRY=from-file:5000\nVERSION=9.9\n",
    )
    monkeypatch.delenv("MIRROR", raising=False)
    monkeypatch.setenv("VERSION", "2.0")
    monkeypatch.delenv("REGISTRY", raising=False)
    settings = config.load(root)
    assert settings.image == "from-file:5000/svc"
    assert settings.mirror == "mirror.local/m"
    assert settings.version == "2.0"
    assert settings.source == "cost: $5"
    monkeypatch.setenv("REGISTRY", "from-env")
    assert config.load(root).image == "from-env/svc"


def test_later_env_files_override_earlier(tmp_path, monkeypatch):
    monkeypatch.delenv("TAG_BASE", raising=False)
    root = write_project(
        tmp_path,
        '[tool.buildtasks]\nimage = "x/${TAG_BASE}"\nenv_files = [".env", ".env.local"]\n',
        env="TAG_BASE=a\n",
    )
    (root / ".env.local").write_text("TAG_BASE=b\n")
    assert config.load(root).image == "x/b"


def test_unknown_key_suggests_the_intended_one(tmp_path):
    root = write_project(
        tmp_path, '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.targets.prod]\nplatfroms = []\n'
    )
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks.targets.prod: unknown key `platfroms` "
        "(did you mean `platforms`?)"
    )


def test_wrong_type_names_key_and_type(tmp_path):
    root = write_project(
        tmp_path,
        '[tool.buildtasks]\nimage = "x"\n'
        '[tool.buildtasks.targets.prod]\nplatforms = "linux/amd64"\n',
    )
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks.targets.prod.platforms must be a list of strings, "
        "got a string"
    )


def test_unset_variable_without_default(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_REGISTRY", raising=False)
    root = write_project(tmp_path, '[tool.buildtasks]\nimage = "${NOPE_REGISTRY}/x"\n')
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks.image uses ${NOPE_REGISTRY}, which is not set; "
        "set NOPE_REGISTRY in the environment or an env file, or write ${NOPE_REGISTRY:-default}"
    )


def test_unknown_check_and_missing_table(tmp_path):
    root = write_project(
        tmp_path, '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.targets.a]\nchecks = ["sise"]\n'
    )
    with pytest.raises(ConfigError, match=r"unknown check 'sise'; known checks: non-root"):
        config.load(root)
    write_project(tmp_path, '[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"no \[tool.buildtasks\] table"):
        config.load(root)
    with pytest.raises(ConfigError, match=r"no pyproject\.toml in"):
        config.load(tmp_path / "missing")


BAD_VALUES = [
    # (TOML under [tool.buildtasks] with image = "x", the key the error must name, reason)
    ("[tool.buildtasks.backup]\nkeep_last = -1", "backup.keep_last", "an integer >= 1"),
    ("[tool.buildtasks.backup]\nkeep_daily = -2", "backup.keep_daily", "an integer >= 0"),
    ("[tool.buildtasks.backup]\nredis_timeout = 0", "backup.redis_timeout", "from 1 to"),
    ("[tool.buildtasks.targets.p]\nsize_budget = 'lots'", "targets.p.size_budget", "not a size"),
    ("[tool.buildtasks.targets.p]\nsize_budget = '-5MB'", "targets.p.size_budget", "not a size"),
    ("[tool.buildtasks.targets.p]\nsize_budget = '0'", "targets.p.size_budget", "above zero"),
    ("[tool.buildtasks.cache]\nkeep_storage = 'lots'", "cache.keep_storage", "not a size"),
    ("[tool.buildtasks.cache]\nuntil = '0h'", "cache.until", "above zero"),
    ("[tool.buildtasks.cache]\nuntil = '7d'", "cache.until", "not a duration"),
    ("[tool.buildtasks.cache]\nkeep_images = -1", "cache.keep_images", ">= 0"),
    ("[tool.buildtasks.cache]\ndirs = ['../elsewhere']", "cache.dirs", "outside the project"),
    ("[tool.buildtasks.stack]\nwait_timeout = 0", "stack.wait_timeout", "from 1 to"),
    ("[tool.buildtasks.stack]\napp_port = 70000", "stack.app_port", "from 1 to 65535"),
    ("[tool.buildtasks.stack]\ndata_owner = 'me me'", "stack.data_owner", "UID:GID"),
    ("[tool.buildtasks.stack]\ndata_dirs = ['data']", "stack.data_dirs", "absolute path"),
    ("[tool.buildtasks.stack]\nproject = 'My Stack'", "stack.project", "compose project"),
    ("[tool.buildtasks.stack]\ncompose = ['/etc/compose.yml']", "stack.compose", "absolute"),
    ("[tool.buildtasks.stack]\nhealth_path = 'health'", "stack.health_path", "starting with /"),
    ("[tool.buildtasks.targets.p]\nplatforms = ['amd64']", "targets.p.platforms", "known: linux"),
    ("[tool.buildtasks.targets.p]\nplatforms = ['foo/bar']", "targets.p.platforms", "known: linux"),
    ("[tool.buildtasks.release]\nplatforms = ['windows/amd64']", "release.platforms", "known:"),
    (
        "[tool.buildtasks.targets.p]\nplatforms = ['linux/arm64', 'linux/arm64']",
        "targets.p.platforms",
        "lists 'linux/arm64' twice",
    ),
    ("[tool.buildtasks.backup]\ndir = '~/backups'", "backup.dir", "starts with ~"),
    ("[tool.buildtasks.backup]\nquiesce = ['api; rm -rf']", "backup.quiesce", "service name"),
    ("[tool.buildtasks.targets.p]\ntags = ['feature/{branch}']", "targets.p.tags", "without a tag"),
    ("[tool.buildtasks.targets.p]\ntags = ['localhost:5000']", "targets.p.tags", "HOST:PORT"),
    (
        "[tool.buildtasks.targets.p]\nsize_budget = '" + "9" * 320 + "MB'",
        "targets.p.size_budget",
        "too large",
    ),
    (
        "[tool.buildtasks.targets.p]\nsize_budget = '2000000GB'",
        "targets.p.size_budget",
        "too large",
    ),
    (
        "[tool.buildtasks.cache]\nkeep_storage = '" + "9" * 20 + "MB'",
        "cache.keep_storage",
        "too large",
    ),
    ("[tool.buildtasks.cache]\nuntil = '99999999999h'", "cache.until", "too long"),
    ("[tool.buildtasks.cache]\nuntil = '87601h'", "cache.until", "too long"),
    (
        "[tool.buildtasks.release]\nversion_file = '" + "v" * 300 + "'",
        "release.version_file",
        "too long",
    ),
    ("env_files = ['" + "e" * 300 + "']", "env_files", "too long"),
    ("[tool.buildtasks.targets.p]\nsecrets = ['a=b']", "targets.p.secrets", "ID=env:VAR"),
    ("[tool.buildtasks.targets.p]\nsecrets = ['k=file:../../k']", "targets.p.secrets", "outside"),
    ("[tool.buildtasks.targets.p]\ntags = ['{target']", "targets.p.tags", "unbalanced"),
    ("[tool.buildtasks.targets.p]\ntags = ['{commit}']", "targets.p.tags", "uses {commit}"),
    ("[tool.buildtasks.targets.p]\ntags = ['{target!r}']", "targets.p.tags", "uses {target}"),
    ("[tool.buildtasks.targets.p]\ntags = ['{}']", "targets.p.tags", "uses {}"),
    ("[tool.buildtasks.targets.p]\ntags = ['a tag']", "targets.p.tags", "is not a tag"),
    ("[tool.buildtasks.targets.p]\ntags = ['Reg/X:y']", "targets.p.tags", "not an image ref"),
    ("[tool.buildtasks.targets.p]\ntags = []", "targets.p.tags", "a non-empty list"),
    ("[tool.buildtasks.targets.p]\ndockerfile = '/etc/passwd'", "targets.p.dockerfile", "absolute"),
    (
        "[tool.buildtasks.targets.p]\ndockerfile = '../../etc/passwd'",
        "targets.p.dockerfile",
        "build context",
    ),
    ("[tool.buildtasks.targets.p]\ncontexts = { a = '../..' }", "targets.p.contexts", "outside"),
    ("[tool.buildtasks.targets.p]\nbuild_args = { 'A=B' = 'c' }", "targets.p.build_args", "name"),
    ("[tool.buildtasks.targets.p]\nattest = ['slsa']", "targets.p.attest", "'provenance' or"),
    ("[tool.buildtasks.targets.P]", "targets.P", "lowercase letters"),
    ("[tool.buildtasks.release]\ntargets = ['nope']", "release.targets", "no target 'nope'"),
    ("[tool.buildtasks.release]\nversion_file = '/etc/passwd'", "release.version_file", "absolute"),
    ("[tool.buildtasks.release]\ntag_prefix = 'v x'", "release.tag_prefix", "single word"),
    ("[tool.buildtasks.backup]\nsqlite = ['api:/../x']", "backup.sqlite", "without .."),
    ("[tool.buildtasks.backup]\nfiles = ['../../home']", "backup.files", "outside the project"),
    ("[tool.buildtasks.backup]\nredis = { url = 'http://x' }", "backup.redis.url", "redis://"),
    ("[tool.buildtasks.proto]\nsrc = 'specs'\nout = '../gen'", "proto.out", "outside"),
    ("[tool.buildtasks.proto]\nsrc = 'specs'", "proto", "`out` is required"),
    ("[tool.buildtasks.proto]\nsrc='s'\nout='o'\nbreaking='WIRE-JSON'", "proto.breaking", "'FILE'"),
    ("[tool.buildtasks.proto]\nsrc='s'\nout='o'\nlint=['standard']", "proto.lint", "buf rule"),
    ("[tool.buildtasks.ci]\npython = '3'", "ci.python", "Python version"),
    ("[tool.buildtasks.ci]\nunit = 'pytest'", "ci.unit", "list of strings"),
]


@pytest.mark.parametrize(("body", "key", "reason"), BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_bad_values_are_one_line_naming_file_and_key(tmp_path, body, key, reason):
    root = write_project(tmp_path, f'[tool.buildtasks]\nimage = "x"\n{body}\n')
    with pytest.raises(ConfigError) as error:
        config.load(root)
    message = str(error.value)
    assert message.startswith(f"pyproject.toml: tool.buildtasks.{key}"), message
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "image",
    ["${X", "reg/a b", "Reg/App", "reg/app:tag", "reg/-app", "reg//app", "${X:-reg}/App", ""],
)
def test_image_follows_the_reference_grammar(tmp_path, image):
    root = write_project(tmp_path, f'[tool.buildtasks]\nimage = "{image}"\n')
    with pytest.raises(ConfigError, match=r"^pyproject.toml: tool.buildtasks.image"):
        config.load(root)


@pytest.mark.parametrize(
    "image",
    [
        "app",
        "127.0.0.1:5000/team/app",
        "localhost/a_b/c__d",
        "Reg.Example.com:443/x-y/z.w",
        "[::1]:5000/a",
    ],
)
def test_valid_images(tmp_path, image):
    assert (
        config.load(write_project(tmp_path, f'[tool.buildtasks]\nimage = "{image}"\n')).image
        == image
    )


def test_values_that_must_pass(tmp_path):
    root = write_project(
        tmp_path,
        """
[tool.buildtasks]
image = "reg:5000/svc"
context = "app"
[tool.buildtasks.targets.prod]
dockerfile = "docker/Dockerfile"
tags = ["{target}", "v{version}-{short_sha}", "other.reg/x:{branch}", "{{literal}}".format()]
secrets = ["ca=ca-bundle", "tok", "t2=env:PIP_TOKEN", "k=file:keys/k.pem"]
platforms = ["linux/amd64", "linux/arm/v7"]
size_budget = "1.5 GiB"
contexts = { buildtasks = "@buildtasks", base = "docker-image://reg/base:1", src = "src" }
[tool.buildtasks.cache]
until = "1h30m"
keep_storage = "5GB"
[tool.buildtasks.backup]
dir = "/var/backups/svc"
keep_last = 1
sqlite = ["api:/app/data/jobs.db", "data/local.db", "/srv/db.sqlite"]
redis = { url = "redis://127.0.0.1:6379/0" }
[tool.buildtasks.stack]
data_owner = "app:app"
""".replace('"{{literal}}".format()', '"latest"'),
    )
    settings = config.load(root)
    prod = settings.targets["prod"]
    assert prod.size_budget_bytes == 1_610_612_736
    assert settings.cache.until_seconds == 5400
    assert settings.cache.keep_storage_bytes == 5_000_000_000
    assert settings.targets["prod"].platforms == ("linux/amd64", "linux/arm/v7")


def test_size_budget_is_checked_at_load_not_after_a_build(tmp_path):
    """Before: "lots" passed the load and failed in the size check after the build, naming
    no key; "-5MB" likewise."""
    root = write_project(
        tmp_path,
        '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.targets.prod]\nsize_budget = "lots"\n',
    )
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks.targets.prod.size_budget: 'lots' is not a size; "
        "write a number with B, KB, MB, GB, KiB, MiB or GiB (e.g. 250MB)"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"tool = 5\n",
        b'[project]\nname = "x\xff"\n',
        b"project = 3\n[tool.buildtasks]\nimage = 'x'\n",
        b"[project]\nname = 3\n[tool.buildtasks]\n",
        b"[tool]\nbuildtasks = []\n",
    ],
)
def test_documents_that_used_to_give_tracebacks(tmp_path, body):
    (tmp_path / "pyproject.toml").write_bytes(body)
    with pytest.raises(ConfigError, match=r"pyproject.toml"):
        config.load(tmp_path)


def test_binary_version_and_env_files_are_config_errors(tmp_path):
    root = write_project(
        tmp_path,
        '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.release]\nversion_file = "v.py"\n',
    )
    (root / "v.py").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks.release.version_file: v.py is not UTF-8 text"
    )
    (root / "v.py").write_text('__version__ = "1.0"\n')
    (root / ".env").write_bytes(b"A=\xff\n")
    with pytest.raises(ConfigError, match=r"tool.buildtasks.env_files: .env is not UTF-8 text"):
        config.load(root)


def test_load_is_cached_until_an_input_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("SVC_TAG", raising=False)
    root = write_project(
        tmp_path,
        '[tool.buildtasks]\nimage = "x/${SVC_TAG:-a}"\n'
        '[tool.buildtasks.release]\nversion_file = "v.py"\n',
        env="",
    )
    (root / "v.py").write_text('__version__ = "1.0"\n')
    first = config.load(root)
    assert config.load(root) is first  # namespace() and every task share one parse
    monkeypatch.setenv("SVC_TAG", "b")
    assert config.load(root).image == "x/b"
    (root / ".env").write_text("OTHER=1\n")
    assert config.load(root).dotenv == {"OTHER": "1"}
    (root / "v.py").write_text('__version__ = "2.0"\n')  # what a release does, then reloads
    assert config.load(root).version == "2.0"


def test_settings_cannot_be_changed_through_their_mappings(tmp_path):
    root = write_project(
        tmp_path,
        '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.targets.a]\nbuild_args = { A = "1" }\n',
    )
    settings = config.load(root)
    with pytest.raises(TypeError):
        settings.targets["a"].build_args["A"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.targets["b"] = settings.targets["a"]  # type: ignore[index]


# --- any document: settings or one ConfigError line, never a traceback ----------------------

# Values a user might write, right and wrong, mixed with anything TOML can hold.
_WORDS = [
    "", ".", "..", "../x", "/etc/passwd", "x", "sub", "loop", "v.py", "bad.env", "${X", "${HOME}",
    "${NOPE:-d}", "$$", "{target", "{}", "{target}", "{sha}-x", "r/x:{branch}", "a:b",
    "api:/app/x", "api:/../x", "linux/amd64", "amd64", "250MB", "-5MB", "0", "1.5 GiB", "168h",
    "7d", "reg:5000/a/b", "Reg/A", "A B", "\x00", "a\nb", "ca=ca-bundle", "t=env:TOKEN",
    "k=file:../k", "k=file:sub/k", "1000:1000", "@buildtasks", "docker-image://x", "redis://h",
    "http://x", "prod", "Dockerfile", "provenance", "registry", "/health",
]  # fmt: skip
# Numbers and names past every limit: a float overflows on 320 digits, a path component
# over 255 bytes makes the system refuse even to look.
_DIGITS = st.sampled_from([19, 20, 309, 320, 4301]) | st.integers(1, 400)  # int64, float, int()
_EXTREME = st.one_of(
    st.tuples(_DIGITS, st.sampled_from(["", "B", "MB", "GiB", "h", "s"])).map(
        lambda n_unit: "9" * n_unit[0] + n_unit[1]
    ),
    st.tuples(st.sampled_from(["", "sub/", "../"]), st.sampled_from([255, 256, 300])).map(
        lambda d_n: d_n[0] + "x" * d_n[1]
    ),
)
_TEXT = st.sampled_from(_WORDS) | st.text(max_size=12) | _EXTREME
_ANY = st.recursive(
    _TEXT
    | st.integers()
    | st.integers(min_value=-2, max_value=70_000)
    | st.floats()
    | st.booleans()
    | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=12,
)
_VALUE = _ANY | st.lists(_TEXT, max_size=3) | st.dictionaries(_TEXT, _TEXT, max_size=2)


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """good four times in five, so that most documents get past their first key."""
    return st.integers(0, 4).flatmap(lambda i: bad if i == 0 else good)


def _typed(hint) -> st.SearchStrategy:
    """Values of the declared type, mostly, so that checks deep inside the schema run."""
    text = str(hint)
    if "Mapping" in text:
        typed = st.dictionaries(_TEXT, _TEXT, max_size=2)
    elif "tuple" in text:
        typed = st.lists(_TEXT, max_size=3)
    elif "int" in text:
        typed = st.integers(min_value=-2, max_value=70_000)
    elif "bool" in text:
        typed = st.booleans()
    else:
        typed = _TEXT
    return _mostly(typed, _VALUE)


def _table_of(cls, required: dict | None = None, **sections):
    """A table with a few of cls's own keys, mostly of their types (so checks deep inside
    the schema run), maybe an unknown key, and sections that are themselves such tables."""
    required = required or {}
    fields = {
        name: _typed(hint)
        for name, hint in typing.get_type_hints(cls).items()
        if name not in ("root", "dotenv", "name", *sections, *required)
    }
    fields["unknown_key"] = _VALUE
    chosen = st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)
    return st.tuples(
        chosen.flatmap(lambda keys: st.fixed_dictionaries({k: fields[k] for k in keys})),
        st.fixed_dictionaries(required, optional=sections),
    ).map(lambda parts: {**parts[0], **parts[1]})


_TARGETS = st.dictionaries(
    st.sampled_from(["prod", "dev", "a-b", "P"]) | st.text(max_size=5),
    _table_of(config.Target) | _ANY,
    max_size=3,
)
_BUILDTASKS = _table_of(
    config.Settings,
    {"image": _mostly(st.sampled_from(["reg/x", "127.0.0.1:5000/a/b"]), _TEXT)},
    targets=_TARGETS | _ANY,
    proto=_table_of(config.ProtoSettings) | _ANY,
    stack=_table_of(config.StackSettings) | _ANY,
    backup=_table_of(config.BackupSettings, offsite=_table_of(config.OffsiteSettings) | _ANY)
    | _ANY,
    release=_table_of(config.ReleaseSettings) | _ANY,
    cache=_table_of(config.CacheSettings) | _ANY,
    ci=_table_of(config.CiSettings) | _ANY,
)
_PROJECT = st.fixed_dictionaries({}, optional={"name": _TEXT | _ANY, "version": _TEXT | _ANY})
_DOCUMENTS = st.fixed_dictionaries(
    {"tool": _mostly(st.fixed_dictionaries({"buildtasks": _BUILDTASKS}), _ANY)},
    optional={"project": _mostly(_PROJECT, _ANY)},
)


def _toml(document: dict) -> bytes | None:
    try:
        text = tomlkit.dumps(document)
        tomllib.loads(text)
    except Exception:  # a dict TOML cannot express (tomlkit's own limits): not a document
        return None
    return text.encode()


def _load_only_config_errors(body: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "pyproject.toml").write_bytes(body)
        (root / "sub").mkdir()
        (root / "v.py").write_bytes(b"\x89PNG\xff__version__ = '1'")
        (root / "bad.env").write_bytes(b"A=1\nB=\xff\n")
        (root / "loop").symlink_to(root / "loop")
        try:
            loaded = config.load(root)
        except ConfigError as exc:
            assert "\n" not in str(exc)
            return
        for target in loaded.targets.values():  # the values tasks derive later
            assert target.size_budget_bytes is None or target.size_budget_bytes > 0
        assert loaded.cache.until_seconds > 0 and loaded.cache.keep_storage_bytes >= 0


# Every key whose value is a size, a duration or a path the loader looks at.
_PROBED = [
    ("targets.p", "size_budget"),
    ("cache", "keep_storage"),
    ("cache", "until"),
    ("release", "version_file"),
    ("", "env_files"),
    ("", "context"),
    ("backup", "dir"),
    ("cache", "dirs"),
]


@settings(max_examples=200, deadline=None)
@given(where=st.sampled_from(_PROBED), value=_EXTREME | _TEXT)
def test_extreme_sizes_durations_and_names_are_one_config_error(where, value):
    section, key = where
    listed = key in ("env_files", "dirs")
    line = f"{key} = {json.dumps([value] if listed else value)}\n"
    head = '[tool.buildtasks]\nimage = "x"\n'
    body = head + (f"[tool.buildtasks.{section}]\n" + line if section else line)
    if section != "targets.p":
        body += "[tool.buildtasks.targets.p]\n"
    _load_only_config_errors(body.encode())


@settings(max_examples=500, deadline=None)
@given(document=_DOCUMENTS)
def test_any_generated_document_loads_or_is_one_config_error(document):
    body = _toml(document)
    assume(body is not None)
    _load_only_config_errors(body)


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=4000),
    splice=st.binary(max_size=12) | _TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
)
def test_any_byte_string_loads_or_is_one_config_error(cut, splice):
    base = (REPO / "pyproject.toml").read_bytes()
    _load_only_config_errors(base[:cut] + splice + base[cut + len(splice) :])
    _load_only_config_errors(splice)


def test_an_integer_too_long_for_python_is_one_config_error(tmp_path):
    root = write_project(tmp_path, '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.cache]\n'
                         f"keep_images = {'9' * 4301}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^pyproject.toml: holds a number too long to read"):
        config.load(root)


def test_tasks_reuse_the_settings_the_namespace_loaded(tmp_path):
    root = write_project(tmp_path, '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.targets.a]\n')
    loaded = config.load(root)
    namespace = collection(listing.of(loaded))
    context = Context(Config(overrides=namespace.configuration()))
    rt = runtime(context)
    assert rt.settings is loaded  # one parse per process, not one per task
    assert runtime(context) is rt  # and one runtime per invocation, shared by its tasks
    assert rt.engine is rt.engine  # with one engine connection


def test_a_typo_is_reported_before_what_it_causes(tmp_path):
    root = write_project(tmp_path, '[tool.buildtasks]\nimgae = "x"\n')
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks: unknown key `imgae` (did you mean `image`?)"
    )


def test_targets_whose_task_names_would_collide_are_one_error(tmp_path):
    table = "[tool.buildtasks.targets.a_b]\n[tool.buildtasks.targets.a-b]\n"
    root = write_project(tmp_path, '[tool.buildtasks]\nimage = "x"\n' + table)
    with pytest.raises(ConfigError, match=r"targets\.a-b: names the same task as target 'a_b'"):
        config.load(root)
