"""Cross-checks of the deployment files that no schema catches (run by
scripts/validate-deploy, with the PyYAML of its venv).

    deploy-checks.py REPO RENDERED_K8S_YAML RESOLVED_COMPOSE_YAML
    deploy-checks.py --check-resource-list KUSTOMIZATION_DIR
    deploy-checks.py --render-without-kustomize KUSTOMIZATION_DIR

* every CHIME_* variable the manifests or the Compose file set is one the
  chime binary reads (a string literal in its Rust sources), or one named in
  UPCOMING;
* Kubernetes: selectors match pod labels; Services and probes name ports that
  exist; ConfigMap/Secret references resolve (name and key); the engine's
  advertised status address names its headless Service and port; every
  container has CPU and memory requests and limits;
* Compose: the Kafka nodes' ids, quorum voters and chime's bootstrap agree,
  and the replication settings fit the number of nodes.

Prints each problem and exits 1 if there is any.

--check-resource-list: the kustomization lists every manifest file of its
directory, nothing missing, and uses every .env file.
--render-without-kustomize: when kustomize is not available, prints the
resource files and the generated ConfigMaps/Secrets (without kustomize's name
hashes, image substitution or labels) as one stream to validate.
"""

import base64
import pathlib
import re
import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def known_variables(repo):
    """CHIME_* names that appear as string literals in the binary's sources."""
    names = set()
    for path in repo.rglob("*.rs"):
        parts = set(path.relative_to(repo).parts)
        if parts & {"target", ".cache", "tests", "examples"}:
            continue
        names.update(re.findall(r'"(CHIME_[A-Z0-9_]+)"', path.read_text(errors="replace")))
    return names


def check_variable(where, name, known):
    if name.startswith("CHIME_") and name not in known:
        problem(where, f"{name} is not a variable chime reads")


def containers(pod_spec):
    return (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or [])


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes(docs, known):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    configs = {**by_kind.get("ConfigMap", {})}
    secrets = {**by_kind.get("Secret", {})}
    services = by_kind.get("Service", {})
    pods = []  # (where, labels, spec)

    for kind in WORKLOADS:
        for name, w in by_kind.get(kind, {}).items():
            where = f"{kind}/{name}"
            template = w["spec"]["template"]
            labels = template.get("metadata", {}).get("labels", {})
            selector = w["spec"].get("selector", {}).get("matchLabels")
            if kind != "Job" and not labels_match(selector, labels):
                problem(where, f"selector {selector} does not match the pod labels {labels}")
            spec = template["spec"]
            pods.append((where, labels, spec, template.get("metadata", {}).get("annotations", {})))
            if kind == "StatefulSet":
                svc = services.get(w["spec"].get("serviceName"))
                if svc is None or svc["spec"].get("clusterIP") != "None":
                    problem(where, f"serviceName {w['spec'].get('serviceName')} is not a headless Service here")
            check_pod(where, spec, configs, secrets, known, w)

    for name, s in services.items():
        where = f"Service/{name}"
        selected = [p for p in pods if labels_match(s["spec"].get("selector"), p[1])]
        if not selected:
            problem(where, f"selector {s['spec'].get('selector')} matches no pod")
        for port in s["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for pw, _, spec, _ in selected:
                if not any(has_port(c, target) for c in spec["containers"]):
                    problem(where, f"targetPort {target} is no container port of {pw}")

    for name, b in by_kind.get("PodDisruptionBudget", {}).items():
        selector = b["spec"].get("selector", {}).get("matchLabels")
        if not any(labels_match(selector, p[1]) for p in pods):
            problem(f"PodDisruptionBudget/{name}", f"selector {selector} matches no pod")

    for where, _, spec, annotations in pods:
        port = annotations.get("prometheus.io/port")
        if port is not None and not any(has_port(c, int(port)) for c in spec["containers"]):
            problem(where, f"prometheus.io/port {port} is no container port")


def has_port(container, port):
    for p in container.get("ports", []):
        if port in (p.get("name"), p.get("containerPort")):
            return True
    return False


def check_pod(where, spec, configs, secrets, known, workload):
    for c in containers(spec):
        cw = f"{where} container {c['name']}"
        env = {}
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                ref = configs.get(source["configMapRef"]["name"])
                if ref is None:
                    problem(cw, f"envFrom names ConfigMap {source['configMapRef']['name']}, not here")
                    continue
                for key, value in (ref.get("data") or {}).items():
                    check_variable(f"{cw} (ConfigMap {ref['metadata']['name']})", key, known)
                    env[key] = value
            if "secretRef" in source:
                ref = secrets.get(source["secretRef"]["name"])
                if ref is None:
                    problem(cw, f"envFrom names Secret {source['secretRef']['name']}, not here")
                    continue
                for key in list(ref.get("data") or {}) + list(ref.get("stringData") or {}):
                    check_variable(f"{cw} (Secret {ref['metadata']['name']})", key, known)
        for e in c.get("env", []):
            check_variable(cw, e["name"], known)
            env[e["name"]] = e.get("value")
            source = e.get("valueFrom", {})
            for kind, objects in (("configMapKeyRef", configs), ("secretKeyRef", secrets)):
                if kind in source:
                    ref = source[kind]
                    obj = objects.get(ref["name"])
                    keys = set((obj or {}).get("data") or {}) | set((obj or {}).get("stringData") or {})
                    if obj is None or ref["key"] not in keys:
                        problem(cw, f"{e['name']} refers to {ref['name']}/{ref['key']}, not here")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c.get(probe) or {}
            for action in ("httpGet", "tcpSocket", "grpc"):
                if action in p and not has_port(c, p[action]["port"]):
                    problem(cw, f"{probe} port {p[action]['port']} is no container port")
        res = c.get("resources", {})
        for level in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(level) or {}):
                    problem(cw, f"no {r} in resources.{level}")
        advertise = env.get("CHIME_ENGINE_STATUS_ADVERTISE")
        if advertise is not None:
            service = workload["spec"].get("serviceName")
            listen_port = (env.get("CHIME_ENGINE_STATUS_LISTEN") or "").rpartition(":")[2]
            if f".{service}:" not in advertise:
                problem(cw, f"CHIME_ENGINE_STATUS_ADVERTISE {advertise} does not name the Service {service}")
            if advertise.rpartition(":")[2] != listen_port or not has_port(c, int(listen_port or 0)):
                problem(cw, f"status port: advertised {advertise}, listening {listen_port}, container ports {c.get('ports')}")


def check_compose(project, known):
    services = project.get("services", {})
    for name, s in services.items():
        for key in (s.get("environment") or {}):
            check_variable(f"compose service {name}", key, known)
    kafka = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("apache/kafka")}
    if not kafka:
        problem("compose", "no apache/kafka service")
        return
    ids = {}
    for name, s in kafka.items():
        env = s.get("environment") or {}
        ids[name] = env.get("KAFKA_NODE_ID")
        voters = sorted(env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(","))
        expected = sorted(f"{(kafka[n].get('environment') or {}).get('KAFKA_NODE_ID')}@{kafka[n].get('hostname', n)}:9093" for n in kafka)
        if voters != expected:
            problem(f"compose service {name}", f"quorum voters {voters}, expected {expected}")
        nodes = len(kafka)
        for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
            if int(env.get(key, 0)) != nodes:
                problem(f"compose service {name}", f"{key}={env.get(key)}, expected {nodes} (one replica per node)")
        for key, rf in (("KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_DEFAULT_REPLICATION_FACTOR"),
                        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR")):
            if not 1 < int(env.get(key, 0)) < int(env.get(rf, 0)):
                problem(f"compose service {name}", f"{key}={env.get(key)}: want more than 1, fewer than {rf}")
    if len(set(ids.values())) != len(ids):
        problem("compose", f"KAFKA_NODE_IDs are not unique: {ids}")
    hosts = {kafka[n].get("hostname", n) for n in kafka}
    for name, s in services.items():
        bootstrap = (s.get("environment") or {}).get("CHIME_KAFKA_BOOTSTRAP")
        if bootstrap is not None:
            listed = {a.rpartition(":")[0] for a in bootstrap.split(",")}
            if listed != hosts:
                problem(f"compose service {name}", f"CHIME_KAFKA_BOOTSTRAP {bootstrap} does not list every Kafka node {sorted(hosts)}")


def kustomization(directory):
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def generators(k):
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for g in k.get(key) or []:
            yield kind, g


def check_resource_list(directory):
    k = kustomization(directory)
    listed = set(k.get("resources") or [])
    where = f"{directory}/kustomization.yaml"
    for r in sorted(listed):
        if not (directory / r).is_file():
            problem(where, f"resource {r} does not exist")
    for f in sorted(directory.iterdir()):
        if f.suffix in (".yaml", ".yml") and f.name != "kustomization.yaml" and f.name not in listed:
            problem(where, f"{f.name} is not in resources")
    envs = {e for _, g in generators(k) for e in g.get("envs") or []}
    for e in sorted(envs):
        if not (directory / e).is_file():
            problem(where, f"generator file {e} does not exist")
    for f in sorted(directory.glob("*.env")):
        if f.name not in envs:
            problem(where, f"{f.name} is used by no generator")


def env_file(path):
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def render_without_kustomize(directory):
    k = kustomization(directory)
    docs = []
    for r in k.get("resources") or []:
        docs.extend(d for d in yaml.safe_load_all((directory / r).read_text()) if d)
    for kind, g in generators(k):
        data = {}
        for e in g.get("envs") or []:
            data.update(env_file(directory / e))
        if kind == "Secret":
            data = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
        docs.append({"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"]}, "data": data})
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")


def main():
    if sys.argv[1] == "--check-resource-list":
        check_resource_list(pathlib.Path(sys.argv[2]))
        for p in problems:
            print(f"deploy-checks: {p}")
        sys.exit(1 if problems else 0)
    if sys.argv[1] == "--render-without-kustomize":
        render_without_kustomize(pathlib.Path(sys.argv[2]))
        return
    repo, rendered, compose = (pathlib.Path(a) for a in sys.argv[1:4])
    known = known_variables(repo)
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    check_kubernetes(docs, known)
    check_compose(yaml.safe_load(compose.read_text()), known)
    for p in problems:
        print(f"deploy-checks: {p}")
    if problems:
        sys.exit(1)
    print(f"deploy-checks: {len(docs)} Kubernetes resources and the Compose project are consistent")


if __name__ == "__main__":
    main()
