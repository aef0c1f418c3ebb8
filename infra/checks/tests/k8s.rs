//! The Kubernetes manifests in `infra/k8s/`: the built-in kinds against the upstream schemas
//! of a pinned Kubernetes version (`kubernetes-validate --strict`), the SpinApp against the
//! SpinKube CRD schema vendored in `infra/k8s/schemas/` (`check-jsonschema`), each validator
//! shown to reject a broken copy, and every value the manifests hand flashcart checked
//! against what the code reads: `spin.toml`'s variables and key-value stores, settlement's
//! flags, its metrics listener, and the Redis config in `infra/redis/`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use flashcart_infra_checks::{repo_root, run};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// The Kubernetes version whose schemas the built-in kinds are checked against
/// (docs/deploy.md names it; the manifests use only GA APIs).
const KUBERNETES_VERSION: &str = "1.33.0";
/// The SpinApp schema, extracted from spin-operator's CRD (infra/k8s/schemas/README.md).
const SPINAPP_SCHEMA: &str = "infra/k8s/schemas/spinapp.v1alpha1.json";
/// What a SpinKube kind's apiVersion starts with.
const SPINKUBE_GROUP: &str = "core.spinkube.dev/";

// ---------------------------------------------------------------------------------------
// Reading the manifests

/// One YAML file of `infra/k8s/` and its documents, as JSON values.
struct Manifest {
    path: PathBuf,
    docs: Vec<Value>,
}

fn k8s_dir() -> PathBuf {
    repo_root().join("infra/k8s")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml_to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(text.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("unsupported YAML key {other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("unsupported YAML node {yaml:?}"),
    }
}

fn parse_yaml(path: &Path) -> Vec<Value> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
        .iter()
        .filter(|doc| !matches!(doc, Yaml::Null))
        .map(yaml_to_json)
        .collect()
}

/// Every manifest: the `*.yaml` files directly in `infra/k8s/` but the kustomization.
fn manifests() -> Vec<Manifest> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("infra/k8s exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no manifests in infra/k8s");
    paths
        .into_iter()
        .map(|path| Manifest {
            docs: parse_yaml(&path),
            path,
        })
        .collect()
}

fn all_docs() -> Vec<Value> {
    manifests().into_iter().flat_map(|m| m.docs).collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().expect("every document has a kind")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"]
        .as_str()
        .expect("every document has a name")
}

fn is_spinkube(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with(SPINKUBE_GROUP))
}

/// The one document of `kind` named `name`.
fn find(kind_name: &str, object: &str) -> Value {
    let mut found: Vec<Value> = all_docs()
        .into_iter()
        .filter(|d| kind(d) == kind_name && name(d) == object)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind_name} {object}");
    found.remove(0)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a Vec<Value> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array at {pointer}"))
}

/// The container named `container` of a workload's pod template.
fn container<'a>(workload: &'a Value, container: &str) -> &'a Value {
    array_at(workload, "/spec/template/spec/containers")
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("{} has no container {container}", name(workload)))
}

/// A container's literal environment variable.
fn env_value<'a>(container: &'a Value, var: &str) -> &'a str {
    array_at(container, "/env")
        .iter()
        .find(|e| e["name"] == var)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no literal env {var}"))
}

/// A SpinApp's literal variable.
fn spin_variable<'a>(app: &'a Value, var: &str) -> Option<&'a str> {
    array_at(app, "/spec/variables")
        .iter()
        .find(|v| v["name"] == var)
        .map(|v| v["value"].as_str().expect("a literal value"))
}

fn spin_toml() -> toml::Table {
    read(&repo_root().join("spin.toml"))
        .parse()
        .expect("spin.toml parses")
}

fn spin_toml_variables() -> toml::Table {
    spin_toml()["variables"]
        .as_table()
        .expect("spin.toml has [variables]")
        .clone()
}

fn spin_toml_variable_is(var: &toml::Value, flag: &str) -> bool {
    var.get(flag).and_then(toml::Value::as_bool) == Some(true)
}

// ---------------------------------------------------------------------------------------
// The validators, as the tests below run them

fn text_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// `kubernetes-validate --strict` against [`KUBERNETES_VERSION`]. Passes only when it exits 0
/// AND reports every document of every file as passed: for a kind it has no schema for
/// (a typo in `kind`, a CRD) it only warns and exits 0.
fn kubernetes_validate(files: &[&Path]) -> Result<String, String> {
    let mut args = vec!["--strict", "--kubernetes-version", KUBERNETES_VERSION];
    args.extend(files.iter().map(|f| path_str(f)));
    let output = run("kubernetes-validate", &args);
    let text = text_of(&output);
    if !output.status.success() {
        return Err(text);
    }
    for file in files {
        for doc in parse_yaml(file) {
            let passed = format!(
                "{} passed for resource {}/{} against version",
                file.display(),
                kind(&doc).to_lowercase(),
                name(&doc)
            );
            if !text.contains(&passed) {
                return Err(format!("expected `{passed}` in:\n{text}"));
            }
        }
    }
    Ok(text)
}

/// `check-jsonschema` against the vendored SpinApp schema.
fn check_spinapp(file: &Path) -> Result<String, String> {
    let output = run(
        "check-jsonschema",
        &["--schemafile", SPINAPP_SCHEMA, path_str(file)],
    );
    let text = text_of(&output);
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A copy of `infra/k8s/<file>` in `dir` with `from` (which must occur exactly once)
/// replaced by `to`.
fn broken_copy(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    let source = read(&k8s_dir().join(file));
    assert_eq!(
        source.matches(from).count(),
        1,
        "{file} must contain {from:?} exactly once for this test"
    );
    let path = dir.join(file);
    std::fs::write(&path, source.replacen(from, to, 1)).expect("writing the broken copy");
    path
}

// ---------------------------------------------------------------------------------------
// The schemas

#[test]
fn built_in_kinds_pass_kubernetes_validate_strict() {
    let manifests = manifests();
    let built_in: Vec<&Path> = manifests
        .iter()
        .filter(|m| !m.docs.iter().any(is_spinkube))
        .map(|m| m.path.as_path())
        .collect();
    for m in &manifests {
        // A file is validated by one tool or the other, never half.
        assert!(
            m.docs.iter().all(is_spinkube) || !m.docs.iter().any(is_spinkube),
            "{} mixes SpinKube and built-in kinds",
            m.path.display()
        );
    }
    assert!(built_in.len() >= 5, "expected the built-in manifests");
    if let Err(text) = kubernetes_validate(&built_in) {
        panic!("kubernetes-validate refused infra/k8s:\n{text}");
    }
}

#[test]
fn spinapps_pass_the_vendored_spinkube_schema() {
    let spinkube: Vec<Manifest> = manifests()
        .into_iter()
        .filter(|m| m.docs.iter().any(is_spinkube))
        .collect();
    assert!(!spinkube.is_empty(), "expected a SpinApp manifest");
    for m in &spinkube {
        // check-jsonschema reads one document per file.
        assert_eq!(
            m.docs.len(),
            1,
            "{}: one SpinApp per file",
            m.path.display()
        );
        assert_eq!(
            kind(&m.docs[0]),
            "SpinApp",
            "only SpinApp has a vendored schema"
        );
        if let Err(text) = check_spinapp(&m.path) {
            panic!("{} fails {SPINAPP_SCHEMA}:\n{text}", m.path.display());
        }
    }
}

#[test]
fn kubernetes_validate_rejects_broken_manifests() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // A misspelt field: only strict mode refuses it.
    let unknown_field = broken_copy(
        dir.path(),
        "settlement.yaml",
        "  replicas: 2\n",
        "  replicass: 2\n",
    );
    let err = kubernetes_validate(&[&unknown_field]).expect_err("an unknown field must fail");
    assert!(
        err.contains("Additional properties are not allowed ('replicass' was unexpected)"),
        "{err}"
    );
    // A port given as a string.
    let wrong_type = broken_copy(
        dir.path(),
        "settlement.yaml",
        "containerPort: 9187",
        "containerPort: \"9187\"",
    );
    let err = kubernetes_validate(&[&wrong_type]).expect_err("a string port must fail");
    assert!(err.contains("'9187' is not of type 'integer'"), "{err}");
    // A misspelt kind: the tool only warns (exit 0); the wrapper the tests use refuses it.
    let unknown_kind = broken_copy(
        dir.path(),
        "redis-cluster-form.yaml",
        "kind: Job",
        "kind: Jbo",
    );
    let err = kubernetes_validate(&[&unknown_kind]).expect_err("an unknown kind must fail");
    assert!(err.contains("Couldn't find schema for kind Jbo"), "{err}");
}

#[test]
fn check_jsonschema_rejects_broken_spinapps() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let misspelt = broken_copy(
        dir.path(),
        "spinapp.yaml",
        "  executor: containerd-shim-spin",
        "  executer: containerd-shim-spin",
    );
    let err = check_spinapp(&misspelt).expect_err("a misspelt field must fail");
    assert!(err.contains("'executer' was unexpected"), "{err}");
    assert!(err.contains("'executor' is a required property"), "{err}");
    // Spin variables are strings; an unquoted number is not.
    let number = broken_copy(dir.path(), "spinapp.yaml", "value: \"16\"", "value: 16");
    let err = check_spinapp(&number).expect_err("a number value must fail");
    assert!(err.contains("16 is not of type 'string'"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The manifests against each other and against the code

/// Not in the kustomization: its placeholders must never overwrite real Secrets.
const NOT_APPLIED_BY_KUSTOMIZE: &str = "secrets.yaml";

#[test]
fn kustomization_lists_every_manifest_but_the_placeholder_secrets() {
    let kustomization = parse_yaml(&k8s_dir().join("kustomization.yaml"));
    let listed: BTreeSet<String> = array_at(&kustomization[0], "/resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .map(|m| {
            m.path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a file name")
                .to_owned()
        })
        .collect();
    assert!(present.contains(NOT_APPLIED_BY_KUSTOMIZE));
    let expected: BTreeSet<String> = present
        .into_iter()
        .filter(|f| f != NOT_APPLIED_BY_KUSTOMIZE)
        .collect();
    assert_eq!(
        listed, expected,
        "kustomization.yaml resources vs infra/k8s/*.yaml"
    );
}

#[test]
fn every_object_is_in_the_flashcart_namespace() {
    let docs = all_docs();
    let namespaces: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Namespace").collect();
    assert_eq!(namespaces.len(), 1, "one Namespace");
    let namespace = name(namespaces[0]);
    for doc in docs.iter().filter(|d| kind(d) != "Namespace") {
        assert_eq!(
            doc["metadata"]["namespace"],
            namespace,
            "{} {} is not in {namespace}",
            kind(doc),
            name(doc)
        );
    }
}

#[test]
fn spinapp_sets_what_spin_toml_declares() {
    let declared = spin_toml_variables();
    let app = find("SpinApp", "flashcart");
    let set: Vec<&str> = array_at(&app, "/spec/variables")
        .iter()
        .map(|v| v["name"].as_str().expect("a variable name"))
        .collect();
    let unique: BTreeSet<&str> = set.iter().copied().collect();
    assert_eq!(unique.len(), set.len(), "a variable set twice: {set:?}");
    for var in &set {
        assert!(
            declared.contains_key(*var),
            "the SpinApp sets `{var}`, which spin.toml does not declare"
        );
    }
    let required: Vec<&String> = declared
        .iter()
        .filter(|(_, v)| spin_toml_variable_is(v, "required"))
        .map(|(k, _)| k)
        .collect();
    assert!(
        !required.is_empty(),
        "spin.toml declares required variables"
    );
    for var in required {
        assert!(
            unique.contains(var.as_str()),
            "spin.toml requires `{var}`; the SpinApp does not set it"
        );
    }
    // A secret variable comes from a Secret, never from a literal in the manifest.
    for v in array_at(&app, "/spec/variables") {
        let var = v["name"].as_str().expect("a variable name");
        if spin_toml_variable_is(&declared[var], "secret") {
            assert!(
                v.get("value").is_none(),
                "secret `{var}` has a literal value"
            );
            assert!(
                v.pointer("/valueFrom/secretKeyRef").is_some(),
                "secret `{var}` must come from a secretKeyRef"
            );
        }
    }
}

/// Every `secretKeyRef` anywhere under `value`, as (secret, key).
fn secret_refs(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            if let Some(r) = map.get("secretKeyRef") {
                out.push((str_at(r, "/name").to_owned(), str_at(r, "/key").to_owned()));
            }
            map.values().for_each(|v| secret_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| secret_refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_secret_key_referenced_exists() {
    let docs = all_docs();
    let mut refs = Vec::new();
    for doc in &docs {
        secret_refs(doc, &mut refs);
    }
    // admin_token, psp_signing_secrets, the ledger URL at least: not a vacuous pass.
    assert!(refs.len() >= 3, "expected secretKeyRefs, found {refs:?}");
    for (secret, key) in refs {
        let secret_doc = docs
            .iter()
            .find(|d| kind(d) == "Secret" && name(d) == secret)
            .unwrap_or_else(|| panic!("no Secret {secret} in infra/k8s"));
        let has = ["stringData", "data"]
            .iter()
            .any(|field| secret_doc[field].get(&key).is_some());
        assert!(has, "Secret {secret} has no key {key}");
    }
}

#[test]
fn committed_secrets_are_placeholders() {
    let docs = all_docs();
    let secrets: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Secret").collect();
    assert!(!secrets.is_empty());
    for secret in secrets {
        assert!(
            secret.get("data").is_none(),
            "use stringData with placeholders"
        );
        for (key, value) in secret["stringData"].as_object().expect("stringData") {
            assert!(
                value.as_str().is_some_and(|v| v.contains("CHANGE-ME")),
                "{}/{key} must be an obvious placeholder",
                name(secret)
            );
        }
    }
}

#[test]
fn spinapp_runtime_config_gives_every_key_value_store_spin_toml_uses() {
    let app = find("SpinApp", "flashcart");
    let stores = array_at(&app, "/spec/runtimeConfig/keyValueStores");
    let configured: BTreeSet<&str> = stores
        .iter()
        .map(|s| s["name"].as_str().expect("a store name"))
        .collect();
    let manifest = spin_toml();
    let mut used = BTreeSet::new();
    for component in manifest["component"]
        .as_table()
        .expect("components")
        .values()
    {
        for store in component
            .get("key_value_stores")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            used.insert(store.as_str().expect("a store name").to_owned());
        }
    }
    assert!(
        !used.is_empty(),
        "spin.toml's components use key-value stores"
    );
    for store in &used {
        assert!(
            configured.contains(store.as_str()),
            "spin.toml uses store `{store}`; the SpinApp's runtimeConfig does not define it"
        );
    }
    // A file-backed store must live on a volume the pod mounts (the image is read-only).
    let mounts: Vec<&str> = array_at(&app, "/spec/volumeMounts")
        .iter()
        .map(|m| m["mountPath"].as_str().expect("a mount path"))
        .collect();
    for store in stores {
        for option in store["options"].as_array().into_iter().flatten() {
            if option["name"] == "path" {
                let path = option["value"].as_str().expect("a literal path");
                assert!(
                    mounts
                        .iter()
                        .any(|m| Path::new(path).starts_with(m) && path != *m),
                    "store path {path} is on no volumeMount ({mounts:?})"
                );
            }
        }
    }
}

/// The string literals following `marker` in `text` (`env = "X"` → `X`).
fn literals_after(text: &str, marker: &str) -> BTreeSet<String> {
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = &text[at + marker.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

#[test]
fn settlement_is_configured_with_what_settlement_reads() {
    let root = repo_root();
    // The flags' environment variables (clap `env = "..."`) and the CLI's log filter.
    let mut known = literals_after(
        &read(&root.join("native/settlement/src/lib.rs")),
        "env = \"",
    );
    known.extend(literals_after(
        &read(&root.join("native/cli/src/main.rs")),
        "from_env(\"",
    ));
    assert!(known.contains("FLASHCART_LEDGER_URL"), "read {known:?}");
    let deployment = find("Deployment", "settlement");
    let settle = container(&deployment, "settlement");
    // `flashcart settle` is the CLI's Settle subcommand over the settlement Config.
    assert_eq!(
        settle["command"],
        serde_json::json!(["flashcart", "settle"])
    );
    assert!(
        read(&root.join("native/cli/src/main.rs")).contains("Settle(flashcart_settlement::Config)")
    );
    for env in array_at(settle, "/env") {
        let var = env["name"].as_str().expect("an env name");
        assert!(
            known.contains(var),
            "settlement is given {var}, which it does not read (it reads {known:?})"
        );
    }
    // The ledger comes from the Secret, and is PostgreSQL (several pods share it).
    let ledger = array_at(settle, "/env")
        .iter()
        .find(|e| e["name"] == "FLASHCART_LEDGER_URL")
        .expect("FLASHCART_LEDGER_URL is set");
    assert!(ledger.pointer("/valueFrom/secretKeyRef").is_some());
    let secret = find("Secret", str_at(ledger, "/valueFrom/secretKeyRef/name"));
    let url = secret["stringData"][str_at(ledger, "/valueFrom/secretKeyRef/key")]
        .as_str()
        .expect("a ledger URL");
    assert!(url.starts_with("postgres://"), "{url}");
}

#[test]
fn settlement_probes_ask_what_its_metrics_listener_serves() {
    let root = repo_root();
    // Settlement's listener is the process's telemetry listener (`flashcart-telemetry`):
    // `/metrics`, and `/health` under the paths its `HEALTH_PATHS` names.
    let telemetry = read(&root.join("native/telemetry/src/lib.rs"));
    let health_paths = telemetry
        .lines()
        .find(|l| l.contains("pub const HEALTH_PATHS"))
        .expect("the telemetry listener's health paths")
        .to_owned();
    let deployment = find("Deployment", "settlement");
    let settle = container(&deployment, "settlement");
    let listen: SocketAddr = env_value(settle, "FLASHCART_SETTLE_METRICS")
        .parse()
        .expect("--metrics-addr takes a socket address");
    assert!(
        listen.ip().is_unspecified(),
        "the kubelet probes the pod IP"
    );
    let port = array_at(settle, "/ports")
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(port["containerPort"], listen.port());
    let mut probes = 0;
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &settle[probe]["httpGet"];
        assert_eq!(get["port"], "metrics", "{probe} port");
        let path = get["path"].as_str().expect("a probe path");
        assert!(
            health_paths.contains(&format!("\"{path}\"")),
            "{probe} asks {path}, which settlement's metrics listener does not serve"
        );
        probes += 1;
    }
    assert_eq!(probes, 3);
    let service = find("Service", "settlement");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .map(|n| serde_json::json!({ "app.kubernetes.io/name": n }))
            .expect("a name label")
    );
}

#[test]
fn edge_and_settlement_agree_on_partitions_and_redis_nodes() {
    let app = find("SpinApp", "flashcart");
    let settle_deployment = find("Deployment", "settlement");
    let settle = container(&settle_deployment, "settlement");
    let default_partitions = spin_toml_variables()["partitions"]["default"]
        .as_str()
        .expect("spin.toml partitions default")
        .to_owned();
    let edge_partitions = spin_variable(&app, "partitions").unwrap_or(&default_partitions);
    assert_eq!(env_value(settle, "FLASHCART_PARTITIONS"), edge_partitions);

    let seeds = spin_variable(&app, "redis_address").expect("redis_address is set");
    assert_eq!(env_value(settle, "FLASHCART_REDIS_CLUSTER"), seeds);
    // Every seed is a node of the StatefulSet, by its stable name under the headless Service,
    // on the port Redis listens on.
    let redis = find("StatefulSet", "redis-cluster");
    let service_name = str_at(&redis, "/spec/serviceName");
    let service = find("Service", service_name);
    assert_eq!(service["spec"]["clusterIP"], "None", "a headless Service");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    let namespace = str_at(&redis, "/metadata/namespace");
    let replicas = redis["spec"]["replicas"].as_u64().expect("replicas");
    let port = array_at(container(&redis, "redis"), "/ports")
        .iter()
        .find(|p| p["name"] == "redis")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("the redis port");
    let nodes: Vec<String> = (0..replicas)
        .map(|n| format!("redis-cluster-{n}.{service_name}.{namespace}.svc.cluster.local:{port}"))
        .collect();
    for seed in seeds.split(',') {
        assert!(
            nodes.iter().any(|n| n == seed),
            "seed {seed} is not one of {nodes:?}"
        );
    }
    // The allowed_outbound_hosts pattern covers the seeds' port (and so every node).
    let hosts = spin_variable(&app, "redis_cluster_hosts").expect("redis_cluster_hosts is set");
    assert_eq!(hosts, format!("*:{port}"));
}

#[test]
fn redis_nodes_run_the_repository_redis_config() {
    let root = repo_root();
    let config = find("ConfigMap", "redis-cluster-config");
    for file in ["flashcart.conf", "cluster.conf"] {
        let repo = read(&root.join("infra/redis").join(file));
        assert_eq!(
            config["data"][file].as_str(),
            Some(repo.as_str()),
            "the ConfigMap's {file} differs from infra/redis/{file}"
        );
    }
    // What docs/reliability.md and docs/architecture.md require of every node.
    let lines: Vec<&str> = ["flashcart.conf", "cluster.conf"]
        .iter()
        .flat_map(|f| config["data"][f].as_str().expect("a file").lines())
        .collect();
    for setting in [
        "appendonly yes",
        "appendfsync everysec",
        "auto-aof-rewrite-min-size 512mb",
        "maxmemory-policy noeviction",
        "cluster-enabled yes",
        "cluster-require-full-coverage no",
    ] {
        assert!(lines.contains(&setting), "missing `{setting}`");
    }
    let redis = find("StatefulSet", "redis-cluster");
    let node = container(&redis, "redis");
    let script = node["command"][2].as_str().expect("the start script");
    assert!(
        script.contains(
            "redis-server /etc/flashcart/flashcart.conf --include /etc/flashcart/cluster.conf"
        ),
        "{script}"
    );
    let config_volume = array_at(&redis, "/spec/template/spec/volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == "redis-cluster-config")
        .expect("the config volume");
    let mount = array_at(node, "/volumeMounts")
        .iter()
        .find(|m| m["name"] == config_volume["name"])
        .expect("the config is mounted");
    assert_eq!(mount["mountPath"], "/etc/flashcart");
    // The AOF and nodes.conf go to the persistent volume.
    let data = array_at(node, "/volumeMounts")
        .iter()
        .find(|m| m["name"] == "data")
        .expect("the data volume is mounted");
    assert!(script.contains(&format!("--dir {}", str_at(data, "/mountPath"))));
    assert!(
        array_at(&redis, "/spec/volumeClaimTemplates")
            .iter()
            .any(|t| t["metadata"]["name"] == "data")
    );
}

#[test]
fn redis_cluster_is_three_masters_with_a_replica_each() {
    let redis = find("StatefulSet", "redis-cluster");
    assert_eq!(redis["spec"]["replicas"], 6, "3 masters + 3 replicas");
    let job = find("Job", "redis-cluster-form");
    let form = container(&job, "form")["command"][2]
        .as_str()
        .expect("the forming script");
    assert!(form.contains("--cluster-replicas 1"), "{form}");
    // Both scripts walk every node of the StatefulSet.
    let every_node = "for i in 0 1 2 3 4 5; do";
    assert!(form.contains(every_node), "{form}");
    let start = container(&redis, "redis")["command"][2]
        .as_str()
        .expect("the start script");
    assert!(start.contains(every_node), "{start}");
}
