"""The Dockerfile, read: its entry point and every `splitserve` command it names exist in the
package, it runs as the chart's non-root user, it builds the CPU or CUDA torch==2.13.0 by build
argument, its tags are the chart's, and scripts/build_image.sh (which builds it for real; see
test_image_build.py) agrees with it on the base image, the stages and the pip build arguments."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import tomllib

import pytest
import yaml

from splitserve.cli import build_parser
from tests.helm.chart import ROOT, goldens

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result, parts = [], []
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            word, _, rest = " ".join(parts).partition(" ")
            result.append((word.upper(), rest))
            parts = []
    return result


def stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (the image or stage it starts FROM, its instructions)."""
    found: dict[str, tuple[str, list]] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            current = found.setdefault(name.strip(), (base.strip(), []))
        elif current is not None:
            current[1].append((word, rest))
    return found


def effective(stage: str, instruction: str) -> str | None:
    """The last value of an instruction in a stage or the stages it is built FROM."""
    all_stages = stages()
    while stage in all_stages:
        base, body = all_stages[stage]
        values = [rest for word, rest in body if word == instruction]
        if values:
            return values[-1]
        stage = base
    return None


def _parse(args: list[str]):
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`splitserve {shlex.join(args)}` does not parse (argparse's error is in stderr)")


def test_entrypoint_is_a_console_script_of_the_package():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for stage in ("runtime", "demo"):
        [name] = yaml.safe_load(effective(stage, "ENTRYPOINT"))
        module, _, attr = scripts[name].partition(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_splitserve_commands_run_at_build_time_parse():
    commands = []
    for word, rest in instructions():
        if word == "RUN":
            commands += [shlex.split(part) for part in re.split(r"&&|;", rest) if part.split()[:1] == ["splitserve"]]
    assert any(c[1] == "make-model" for c in commands)
    for command in commands:
        args = [a for a in command[1:] if not a.startswith(">")]
        if args != ["--help"]:
            _parse(args)


def _documented(prefix: str) -> list[list[str]]:
    lines = [line.lstrip("# ").strip() for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")]
    return [shlex.split(line) for line in lines if line.startswith(prefix)]


def test_documented_docker_run_commands_parse():
    services = set()
    for command in _documented("docker run"):
        image_at = next(i for i, token in enumerate(command) if token.startswith("splitserve:"))
        parsed = _parse(command[image_at + 1 :])
        services.add(parsed.role if parsed.command == "node" else parsed.command)
    assert services == {"router", "prefill", "decode", "mixed"}


def test_documented_tags_are_the_ones_the_chart_pulls():
    chart = yaml.safe_load((goldens.CHART_DIR / "Chart.yaml").read_text())
    demo = goldens.load_values(goldens.EXAMPLES_DIR / "values-cpu-demo.yaml")
    tags = {c[c.index("-t") + 1] for c in _documented("docker build")}
    variants = {"cpu", "cuda"}
    assert {f"splitserve:{chart['appVersion']}-{v}" for v in variants} <= tags
    assert f"splitserve:{demo['image']['tag']}-cpu" in tags


def test_final_stages_run_as_the_chart_user():
    values = yaml.safe_load(goldens.VALUES.read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    [useradd] = [rest for word, rest in instructions() if word == "RUN" and "useradd" in rest]
    assert f"--uid {uid}" in useradd
    for stage in ("runtime", "demo"):
        assert effective(stage, "USER") == f"{uid}:{values['podSecurityContext']['runAsGroup']}"
    assert list(stages())[-1] == "runtime"  # a plain `docker build` builds the serving image


def test_variant_build_arg_selects_the_cpu_or_cuda_torch_build():
    args = dict(rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest)
    assert args["VARIANT"] == "cpu"
    assert args["TORCH_VERSION"] == "2.13.0"
    [install] = [rest for word, rest in instructions() if word == "RUN" and "torch==" in rest]
    assert 'cpu) index="$TORCH_INDEX/cpu"' in install
    assert 'cuda) index="$TORCH_INDEX/$TORCH_CUDA"' in install
    assert '"torch==$TORCH_VERSION" --index-url "$index"' in install


def _ignored() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_build_context_leaves_out_local_state():
    assert {".git", ".venv", "models", "tests"} <= set(_ignored())
    copies = [rest for word, rest in instructions() if word == "COPY" and "--from=" not in rest]
    assert copies == [". ."]  # the context as .dockerignore leaves it


def test_every_package_pyproject_installs_reaches_the_build_context():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()]
    installed = [name for name in packages if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert "splitserve" in installed
    excluded = [name for name in installed if any(fnmatch.fnmatch(name, rule) for rule in _ignored())]
    assert excluded == [], ".dockerignore leaves out packages the image must install"


BUILD_SCRIPT = ROOT / "scripts" / "build_image.sh"
PIP_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT")


def test_pip_sources_are_build_args_unset_by_default():
    _, builder = stages()["builder"]
    declared = [rest for word, rest in builder if word == "ARG"]
    assert all(name in declared for name in PIP_ARGS)  # no default: a plain build uses PyPI
    script = BUILD_SCRIPT.read_text()
    assert all(f'"{name}=' in script for name in PIP_ARGS)


def test_build_script_names_the_dockerfile_base_and_stages():
    script = BUILD_SCRIPT.read_text()
    args = dict(rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest)
    base = stages()["base"][0].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"])
    assert f"BASE=docker.io/library/{base}\n" in script
    assert "--pull=never" in script and "debootstrap" in script and "bookworm" in script
    built = re.findall(r"^build (\S+) ", script, re.M)
    assert built == ["runtime", "demo"] and set(built) <= set(stages())


def test_the_installed_package_carries_every_native_kernel_source():
    """pip installs csrc/ as package data: a source or header left out makes every node built from
    the image fall back to torch's ops (the headers once were)."""
    from splitserve.engine import native

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = globs["splitserve.engine"]
    files = [path.relative_to(path.parents[1]).as_posix() for path in native.SOURCES + native.HEADERS]
    assert [f for f in files if not any(fnmatch.fnmatch(f, glob) for glob in shipped)] == []
    assert {p.name for p in native.CSRC.iterdir()} == {p.name for p in native.SOURCES + native.HEADERS}


def test_the_cpu_image_ships_the_native_kernels_built_ahead():
    """Built in the builder stage for every AVX2+FMA CPU, loaded by the app from where the app's
    environment says, with OpenMP's runtime and no compiler."""
    _, builder = stages()["builder"]
    _, app = stages()["app"]
    built = " ".join(rest for word, rest in builder if word == "RUN")
    assert "g++" in built and "SPLITSERVE_NATIVE_MARCH=x86-64-v3 SPLITSERVE_NATIVE_DIR=/opt/splitserve-native" in built
    runs = " ".join(rest for word, rest in app if word == "RUN")
    assert "libgomp1" in runs and "g++" not in runs
    env = " ".join(rest for word, rest in app if word == "ENV")
    assert "SPLITSERVE_NATIVE_MARCH=x86-64-v3" in env and "SPLITSERVE_NATIVE_DIR=/opt/splitserve-native" in env
    assert ("COPY", "--from=builder /opt/splitserve-native /opt/splitserve-native") in app
