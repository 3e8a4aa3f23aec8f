"""deploy/Dockerfile and .dockerignore, linted for what matters (hadolint is not available).

Pinned base, multi-stage, a non-root final USER, a HEALTHCHECK that runs, no secrets in
ENV/ARG, every COPY source present and not excluded, and the install steps the Dockerfile
runs exist in deploy/docker/install.sh (tests/integration/test_deploy_image.py runs them).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cartridge_dagster.config import load_settings
from cartridge_dagster.deploy import DeployOptions, helm_values
from cartridge_dagster.deploy.k8s import APP_GID, APP_UID
from tests.support.services import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
INSTALL = REPO / "deploy" / "docker" / "install.sh"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return Dockerfile(args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_is_multi_stage_with_a_pinned_base(dockerfile: Dockerfile) -> None:
    names = [s.name for s in dockerfile.stages]
    assert names == ["builder", "runtime"]
    for stage in dockerfile.stages:
        image, _, tag = stage.base.partition(":")
        assert "${" not in stage.base, f"unresolved base {stage.base}"
        assert "@sha256:" in stage.base or re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", tag), (
            f"{stage.base}: pin an exact version (or a digest), never latest"
        )
        assert image == "python" and tag.startswith("3.13.")
    # The builder's venv is copied into an identical interpreter.
    assert dockerfile.stages[0].base == dockerfile.stages[1].base
    assert re.fullmatch(r"\d+\.\d+\.\d+", dockerfile.args["UV_VERSION"])


def test_runtime_runs_as_the_non_root_user_the_manifests_expect(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stages[-1]
    users = runtime.of("USER")
    assert users == [f"{APP_UID}:{APP_GID}"]
    keywords = [kw for kw, _ in runtime.instructions]
    after_user = keywords[keywords.index("USER") :]
    assert "RUN" not in after_user, "nothing may run as root after USER"
    setup = " ".join(runtime.of("RUN"))
    assert f"--uid {APP_UID}" in setup and f"--gid {APP_GID}" in setup
    assert APP_UID != 0
    settings = load_settings(REPO / "examples" / "demo.yaml")
    values = helm_values(settings, DeployOptions())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["podSecurityContext"]["runAsUser"] == APP_UID


def test_healthcheck_runs_the_stdlib_probe(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stages[-1]
    (check,) = runtime.of("HEALTHCHECK")
    assert "--interval=" in check and "--timeout=" in check and "--retries=" in check
    command = check.split("CMD", 1)[1].strip()
    assert command.startswith("[")
    assert '"cartridge_dagster.deploy.healthcheck"' in command
    assert (REPO / "cartridge_dagster" / "deploy" / "healthcheck.py").is_file()
    env = " ".join(runtime.of("ENV"))
    assert "CARTRIDGE_HEALTHCHECK=grpc://127.0.0.1:3030" in env


def test_cmd_serves_the_code_location_the_helm_values_name(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stages[-1]
    (cmd,) = runtime.of("CMD")
    assert '"code-server", "start"' in cmd and '"3030"' in cmd
    assert "cartridge_dagster.definitions" in cmd
    values = helm_values(load_settings(REPO / "examples" / "demo.yaml"), DeployOptions())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    # The chart runs `dagster code-server start -h 0.0.0.0 -p PORT <codeServerArgs>`.
    assert deployment["codeServerArgs"] == ["--module-name", "cartridge_dagster.definitions"]
    assert "dagsterApiGrpcArgs" not in deployment
    assert deployment["port"] == 3030
    assert {"3030", "8000"} <= set(" ".join(runtime.of("EXPOSE")).split())


SECRETISH = re.compile(r"(?i)(password|passwd|secret|token|api_?key|credential|connection_string)")


def test_no_secrets_in_env_arg_or_copied_files(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for keyword in ("ENV", "ARG"):
            for args in stage.of(keyword):
                for assignment in shlex.split(args):
                    key = assignment.split("=", 1)[0]
                    assert not SECRETISH.search(key), f"{keyword} {key}: secrets come at run time"
        for args in stage.of("COPY"):
            assert ".env" not in args and "profiles.yml" not in args
    text = DOCKERFILE.read_text()
    assert "--mount=type=secret" not in text or "ENV" not in text.split("--mount=type=secret")[1]
    assert not re.search(r"://[^/\s@:]+:[^/\s@]+@", text), "no credentials in URLs"


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` spans directories, ``*`` and ``?`` do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; excluding a directory excludes its
    contents."""
    prefixes = [path, *(str(p) for p in Path(path).parents if str(p) != ".")]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/lib/python3.13/site-packages/x.py",
        ".git/config",
        ".cartridge/postgres/data/pg_hba.conf",
        ".env",
        "cartridge_dagster/.env",
        "dbt_project/profiles.yml",
        "dbt_project/target/manifest.json",
        "tests/unit/test_x.py",
        "examples/demo.yaml",
        "cartridge_dagster/__pycache__/config.cpython-313.pyc",
        "server.key",
    ],
)
def test_dockerignore_keeps_state_and_secrets_out(path: str, ignore_patterns: list[str]) -> None:
    assert _ignored(path, ignore_patterns), path


def test_every_copy_source_exists_and_is_sent(
    dockerfile: Dockerfile, ignore_patterns: list[str]
) -> None:
    sources: list[str] = []
    for stage in dockerfile.stages:
        for args in stage.of("COPY"):
            parts = [p for p in args.split() if not p.startswith("--")]
            if "--from=" in args:
                continue
            sources.extend(parts[:-1])
    assert {"pyproject.toml", "uv.lock", "README.md", "cartridge_dagster", "dbt_project"} <= set(
        sources
    )
    for source in sources:
        assert not _ignored(source, ignore_patterns), f"{source} is excluded by .dockerignore"
        if source != "dbt_project":  # generated by `cartridge init`; required at build time
            assert (REPO / source).exists(), source
    assert not _ignored("cartridge_dagster/deploy/healthcheck.py", ignore_patterns)
    assert not _ignored("dbt_project/models/generated/shop/stg_shop__orders.sql", ignore_patterns)


def test_dockerfile_runs_every_install_step_and_nothing_else(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stages[0]
    runs = " ".join(builder.of("RUN"))
    steps = re.findall(r"deploy/docker/install\.sh (\w+)", runs)
    assert steps == ["deps", "project", "dbt", "check"]
    script = INSTALL.read_text()
    for step in steps:
        assert re.search(rf"^\s+{step}\)", script, re.MULTILINE), step
    assert "uv sync --frozen" in script, "installs exactly what uv.lock pins"
    env = " ".join(builder.of("ENV"))
    assert "UV_PYTHON_DOWNLOADS=never" in env and "UV_PROJECT_ENVIRONMENT=" in env
