"""stacks/monitoring.yml, the monitoring overlay, without running it: resolved with each single-node stack by compose
itself (hardening, 127.0.0.1, pinned images, the password as a file), its Prometheus jobs against each engine's stack
(service, port, key file), and its Grafana dashboards read through Grafana's own schema types.

Grafana cannot run here (its image cannot be pulled), so the dashboards are linted, not rendered: each is decoded by
grafana-foundation-sdk's Dashboard (classes Grafana generates from its dashboard schema, for Grafana 11.6) and encoded
back, and every key we wrote must survive (a key the schema does not know is dropped); then a structural check of
what Grafana needs to draw a panel. The queries themselves run against a real Prometheus in
tests/e2e/test_monitoring.py, and the vLLM and SGLang names are checked against the engines' packages in
tests/integration/test_metric_names.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from support.builder import builder_in_process as builder
from support.compose import compose
from support.prerequisites import REPO

from builder.images import runtime

STACKS = REPO / "stacks"
MONITORING = STACKS / "monitoring"
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))}
PROMETHEUS = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
DATASOURCE = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources.yml").read_text())["datasources"]
# Each engine's stack, its engine service and the key its secrets-init makes; the job and dashboard of the same name.
ENGINES = {"llamacpp": ("llamacpp-webui.yml", "llamacpp_api_key"), "vllm": ("vllm-webui.yml", "vllm_api_key"),
           "ktransformers": ("ktransformers-webui.yml", "ktransformers_api_key")}
# The metric prefix each dashboard reads; the GPU one reads NVIDIA's DCGM exporter.
PREFIX = {"llamacpp": "llamacpp:", "vllm": "vllm:", "ktransformers": "sglang:", "gpus": "DCGM_FI_"}
SINGLE_NODE = [["llamacpp-webui.yml"], ["llamacpp-webui.yml", "llamacpp-cpu.yml"], ["vllm-webui.yml"],
               ["ktransformers-webui.yml"], ["ollama-webui.yml"]]
OVERLAY_SERVICES = {"monitoring-secrets-init", "prometheus", "grafana", "dcgm-exporter"}
METRIC = re.compile(r"\b(?:llamacpp|vllm|sglang):[A-Za-z0-9_:]*[A-Za-z0-9_]|\bDCGM_FI_\w+")


def resolved(files: list[str]) -> dict:
    """The stack as compose resolves it (a fresh clone: no .env)."""
    return json.loads(compose(files, "config", "--format", "json").stdout)


def queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def dropped(ours, back, path: str = "") -> list[str]:
    """The keys of `ours` missing from `back` (the schema types' reading of it), as paths."""
    if isinstance(ours, dict):
        if not isinstance(back, dict):
            return [path or "/"]
        return [p for k, v in ours.items() for p in ([f"{path}/{k}"] if k not in back else dropped(v, back[k], f"{path}/{k}"))]
    if isinstance(ours, list):
        if not isinstance(back, list) or len(back) != len(ours):
            return [path]
        return [p for i, (a, b) in enumerate(zip(ours, back)) for p in dropped(a, b, f"{path}[{i}]")]
    return [] if ours == back else [f"{path}: {ours!r} became {back!r}"]


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_passes_grafanas_schema_types(name: str):
    ours = DASHBOARDS[name]
    back = json.loads(json.dumps(Dashboard.from_json(ours), cls=JSONEncoder))
    assert dropped(ours, back) == []


def test_schema_check_catches_a_key_grafana_does_not_know():
    broken = json.loads(json.dumps(DASHBOARDS["llamacpp"]))
    broken["panels"][0]["gridPoss"] = broken["panels"][0].pop("gridPos")
    back = json.loads(json.dumps(Dashboard.from_json(broken), cls=JSONEncoder))
    assert dropped(broken, back) == ["/panels[0]/gridPoss"]


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_structure(name: str):
    """What Grafana needs to draw each panel from the provisioned Prometheus: unique ids, the data source by its
    provisioned uid, a query per target with its own refId, a place on the 24-column grid that no other panel takes."""
    d = DASHBOARDS[name]
    (source,) = DATASOURCE
    assert d["uid"] == f"r1kit-{name}" and d["title"] and d["schemaVersion"] >= 36 and d["editable"] is False
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])
    taken: set[tuple[int, int]] = set()
    for p in d["panels"]:
        assert p["type"] == "timeseries" and p["title"] and p["description"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": source["uid"]}, p["title"]
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip() and t["legendFormat"], p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_dashboard_reads_its_own_engines_metrics(name: str):
    names = {m for q in queries(DASHBOARDS[name]) for m in METRIC.findall(q)}
    assert names and all(m.startswith(PREFIX[name]) for m in names), names


def test_every_engine_dashboard_shows_what_operators_ask():
    """Output tokens/s, requests running and waiting, latency, prompt versus generation, and the KV cache (llama-server
    exports no KV-cache usage: its panel says so and shows the longest sequence instead)."""
    for name in ENGINES:
        titles = " | ".join(p["title"] for p in DASHBOARDS[name]["panels"]).lower()
        for want in ("output tokens/s", "running and waiting", "first token", "inter-token latency", "prompt versus generation", "kv cache"):
            assert want in titles.replace("kv-cache", "kv cache"), f"{name}: no panel for {want}"
    gpu = " | ".join(p["title"] for p in DASHBOARDS["gpus"]["panels"]).lower()
    assert "utilisation" in gpu and "memory" in gpu


def test_bench_gauges_are_on_the_engines_dashboards():
    """The gauges `builder bench --prometheus` records are the ones the dashboards show."""
    for engine in ENGINES:
        shown = {m for q in queries(DASHBOARDS[engine]) for m in METRIC.findall(q)}
        metrics = runtime.load(engine).metrics
        assert {metrics[g] for g in runtime.GAUGES if g in metrics} <= shown, engine
        assert metrics["output_tokens"] in shown, engine


def test_prometheus_has_a_job_per_engine_on_its_service_port_and_key():
    jobs = {j["job_name"]: j for j in PROMETHEUS["scrape_configs"]}
    assert set(jobs) == {*ENGINES, "dcgm"}
    assert set(DASHBOARDS) == {*ENGINES, "gpus"}
    for engine, (stack, key) in ENGINES.items():
        services = resolved([stack])["services"]
        assert engine in services, f"{stack} has no service {engine}"
        assert key in services["secrets-init"]["command"], f"{stack} makes no {key}"
        (sd,) = jobs[engine]["dns_sd_configs"]
        assert sd["names"] == [engine] and sd["type"] == "A" and sd["port"] == runtime.load(engine).port
        assert jobs[engine]["authorization"]["credentials_file"] == f"/run/r1kit/keys/{key}"


def test_engines_export_their_metrics_in_their_stacks():
    """llama-server only with --metrics, SGLang only with --enable-metrics; vLLM always."""
    llamacpp = resolved(["llamacpp-webui.yml"])["services"]["llamacpp"]
    assert llamacpp["environment"]["LLAMA_ARG_ENDPOINT_METRICS"] == "1"
    kt = resolved(["ktransformers-webui.yml"])["services"]["ktransformers"]
    assert "--enable-metrics" in kt["command"]


@pytest.mark.parametrize("files", SINGLE_NODE, ids=lambda f: "+".join(Path(x).stem for x in f))
def test_overlay_resolves_with_each_single_node_stack_hardened(files: list[str]):
    cfg = resolved([*files, "monitoring.yml"])
    services = cfg["services"]
    assert OVERLAY_SERVICES <= set(services)
    for name in OVERLAY_SERVICES:
        spec = services[name]
        assert spec.get("cap_drop") == ["ALL"] and "no-new-privileges:true" in spec["security_opt"], name
        assert not spec.get("cap_add") and not spec.get("privileged") and spec.get("network_mode") is None, name
        image = spec["image"]
        assert re.search(r":[\w.-]*\d[\w.-]*$", image) and not image.endswith(":latest"), f"{name}: {image} is not pinned"
        for port in spec.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
    for name in ("prometheus", "grafana"):
        spec = services[name]
        assert spec["read_only"] is True and spec["user"] and not spec["user"].startswith("0"), name
        assert spec["group_add"] == ["10001"], name
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert {p["published"] for p in prometheus["ports"]} == {"9090"} and {p["published"] for p in grafana["ports"]} == {"3001"}
    # The password is a file in a volume of its own (the engines mount the stack's keys volume, never this one).
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/r1kit/keys/grafana_admin_password"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert not any("PASSWORD" in k and not k.endswith("__FILE") for k in env)
    mounts = {m["target"]: m for m in grafana["volumes"]}
    assert mounts["/run/r1kit/keys"]["source"] == "monitoring-keys" and mounts["/run/r1kit/keys"]["read_only"]
    assert {m["source"] for m in services["monitoring-secrets-init"]["volumes"]} == {"monitoring-keys"}
    assert services["monitoring-secrets-init"]["command"] == ["grafana_admin_password"]
    for service, spec in services.items():
        if service not in ("grafana", "monitoring-secrets-init"):
            assert "monitoring-keys" not in {m.get("source") for m in spec.get("volumes", [])}, service
    # Prometheus reads the engines' keys, read-only.
    keys = {m["target"]: m for m in prometheus["volumes"]}["/run/r1kit/keys"]
    assert keys["source"] == "keys" and keys["read_only"]
    assert services["dcgm-exporter"]["profiles"] == ["gpu"]


def test_overlay_settings_are_variables_with_the_documented_defaults():
    """Each image and address of the overlay comes from a variable that stacks/.env.example lists (test_stacks checks
    the defaults agree)."""
    text = (STACKS / "monitoring.yml").read_text()
    example = (STACKS / ".env.example").read_text()
    for var in ("PROMETHEUS_IMAGE", "GRAFANA_IMAGE", "DCGM_EXPORTER_IMAGE", "PROMETHEUS_BIND", "PROMETHEUS_PORT",
                "GRAFANA_BIND", "GRAFANA_PORT", "PROMETHEUS_RETENTION", "GRAFANA_ADMIN_PASSWORD"):
        assert "${" + var in text and f"# {var}=" in example, var


@pytest.mark.parametrize("url, says", [
    ("ftp://127.0.0.1:9090", "is not an http(s) URL"),
    ("http://127.0.0.1:99999", "port 99999 is out of range"),
    ("http://127.0.0.1:9090/?x=1", "takes no query or fragment"),
    ("", "is not an http(s) URL"),
])
def test_bench_refuses_a_prometheus_url_that_cannot_be_before_any_request(url: str, says: str, tmp_path: Path):
    """Checked before the first request (the server here does not even exist) and before anything is written."""
    out = tmp_path / "bench.json"
    run = builder("bench", "http://127.0.0.1:9", "--requests", "1", "--concurrency", "1", "--prometheus", url, "--json", str(out),
                  check=False, capture_output=True)
    assert run.returncode == 2 and says in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("error: --prometheus ") and not out.exists()
