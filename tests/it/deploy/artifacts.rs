//! The files under `deploy/` hold to what the binary does: the systemd unit verifies and is
//! hardened, the container recipe's settings are real flags and its healthcheck works, the
//! Kubernetes manifests keep their invariants, and every metric the dashboard and the alert
//! rules name is one the proxy exports.

use crate::support::bin::{bin, stderr, stdout};
use crate::support::*;
use aibridge_proxy::cli::config_file;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Whether `tool` is on the PATH; under CI (which installs it) a missing tool fails the test.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{tool} is missing; .ci/run installs it"
    );
    found
}

/// A config file's text accepted by `serve --config` (every key a flag, every value valid).
fn assert_valid_config(text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aibridge-proxy.toml");
    std::fs::write(&path, text).unwrap();
    let argv: Vec<OsString> = vec![
        "aibridge-proxy".into(),
        "serve".into(),
        "--config".into(),
        path.into(),
    ];
    if let Err(e) = config_file::resolve(argv) {
        panic!("{what} is not a valid config file: {e:?}");
    }
}

/// The settings of a config file, as TOML.
fn settings(text: &str) -> toml::Table {
    toml::from_str(text).unwrap()
}

fn duration_secs(table: &toml::Table, key: &str, default: &str) -> u64 {
    let text = table
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or(default)
        .to_string();
    humantime::parse_duration(&text).unwrap().as_secs()
}

// --- systemd -----------------------------------------------------------------------------

/// `Key=value` lines of a unit (every value of a repeated key).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_is_locked_down() {
    let unit = read("systemd/aibridge-proxy.service");
    let one = |key: &str| {
        let v = unit_values(&unit, key);
        assert_eq!(v.len(), 1, "{key}= once: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("User"), "aibridge-proxy");
    assert!(read("systemd/aibridge-proxy.sysusers").contains("u aibridge-proxy "));
    assert_eq!(one("StateDirectory"), "aibridge-proxy");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "", "an empty capability set");
    assert_eq!(one("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
    let filters = unit_values(&unit, "SystemCallFilter");
    assert!(
        filters.contains(&"@system-service".to_string()),
        "{filters:?}"
    );
    // Descriptors for --max-connections clients, each with an upstream or tunnel, and spare.
    let nofile: usize = one("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 2 * aibridge_proxy::config::DEFAULT_MAX_CONNECTIONS + 1024);
    // The stop timeout outlives the drain.
    let stop = humantime::parse_duration(&one("TimeoutStopSec")).unwrap();
    assert!(
        stop > aibridge_proxy::config::DEFAULT_SHUTDOWN_GRACE + std::time::Duration::from_secs(5)
    );
    // It runs the sample config, which serve accepts.
    assert!(one("ExecStart").ends_with("serve --config /etc/aibridge-proxy/aibridge-proxy.toml"));
    let sample = read("aibridge-proxy.toml");
    assert_valid_config(&sample, "deploy/aibridge-proxy.toml");
    assert!(duration_secs(&settings(&sample), "shutdown-grace", "30s") + 5 < stop.as_secs());

    if !have("systemd-analyze") {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aibridge-proxy.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/bin/aibridge-proxy",
            env!("CARGO_BIN_EXE_aibridge-proxy"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        stderr(&out)
    );
    assert!(stderr(&out).trim().is_empty(), "warnings: {}", stderr(&out));
    // systemd's own exposure score (0 best, 100 worst): 12 today; fail if it creeps past 20.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}",
        stdout(&out)
    );
}

// --- container ---------------------------------------------------------------------------

/// The Containerfile's instructions, continuation lines joined: `(INSTRUCTION, arguments)`.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_recipe_uses_real_settings_and_its_healthcheck_works() {
    let steps = instructions(&read("container/Containerfile"));
    let all = |op: &str| -> Vec<String> {
        steps
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .collect()
    };
    assert_eq!(all("FROM").len(), 2, "multi-stage");
    assert!(all("RUN")
        .iter()
        .any(|r| r.contains("cargo build --release --locked")));
    let user = all("USER");
    assert_eq!(user.len(), 1);
    let uid = user[0].split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "runs as non-root: {uid}");
    assert_eq!(all("VOLUME"), vec![r#"["/data"]"#.to_string()]);
    assert_eq!(all("WORKDIR").last().map(String::as_str), Some("/data"));

    // Every ENV is a real flag's variable; every path it sets is inside the volume.
    let env: Vec<(String, String)> = all("ENV")
        .iter()
        .flat_map(|e| {
            e.split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let known = flag_env_names();
    for (k, v) in &env {
        assert!(known.contains(k), "ENV {k} is no flag's variable");
        if v.starts_with('/') || v.starts_with("sqlite://") {
            assert!(v.contains("/data/"), "{k}={v} outside the /data volume");
        }
    }
    let port = |k: &str| -> String {
        let v = &env.iter().find(|(n, _)| n == k).unwrap().1;
        v.rsplit(':').next().unwrap().to_string()
    };
    let exposed: BTreeSet<String> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([port("AIBRIDGE_LISTEN"), port("AIBRIDGE_ADMIN_LISTEN")]),
        "both ports exposed"
    );

    // The HEALTHCHECK command, run as the image would: the image's environment, with the
    // admin address and token file of a running proxy in place of the image's.
    let healthcheck = all("HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1);
    let exec = healthcheck[0].split_once("CMD").unwrap().1.trim();
    let argv: Vec<String> = serde_json::from_str(exec).unwrap();
    assert_eq!(argv[0], "/usr/bin/aibridge-proxy");
    let proxy = Env::openai().await;
    let admin = proxy.app.admin_addr.unwrap();
    let token = proxy.dir.path().join("admin-token");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = bin();
        cmd.args(&argv[1..]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        // The image listens on 0.0.0.0 and the check asks loopback: the same mapping here.
        cmd.env("AIBRIDGE_ADMIN_LISTEN", format!("0.0.0.0:{}", admin.port()))
            .env("AIBRIDGE_ADMIN_TOKEN_FILE", token)
            .env_remove("AIBRIDGE_ADMIN_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    proxy.stop().await;
}

/// Every environment variable a `serve` flag (or a global flag) reads.
fn flag_env_names() -> BTreeSet<String> {
    use clap::CommandFactory;
    let cmd = aibridge_proxy::cli::Cli::command();
    let serve = cmd.find_subcommand("serve").unwrap();
    cmd.get_arguments()
        .chain(serve.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

// --- Kubernetes --------------------------------------------------------------------------

/// Every document of every manifest, by kind.
fn manifests() -> Vec<Yaml> {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            docs.extend(parsed);
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or_default()
}

#[test]
fn the_kubernetes_manifests_keep_their_invariants() {
    let docs = manifests();
    let kustomization = of_kind(&docs, "Kustomization");
    let deployment = of_kind(&docs, "Deployment");
    let pdb = of_kind(&docs, "PodDisruptionBudget");
    let config_map = of_kind(&docs, "ConfigMap");
    let service = of_kind(&docs, "Service");
    // The kustomization applies every manifest.
    let resources: BTreeSet<&str> = list(&kustomization["resources"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for f in [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
    ] {
        assert!(resources.contains(f), "{f} not in kustomization.yaml");
    }

    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3));
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(
        &deployment["spec"]["template"]["metadata"]["labels"],
        labels
    );
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels);
    assert!(
        pdb["spec"]["minAvailable"].as_i64() == Some(2)
            || pdb["spec"]["maxUnavailable"].as_i64() == Some(1),
        "the PDB keeps two of three"
    );

    let pod = &deployment["spec"]["template"]["spec"];
    let containers = list(&pod["containers"]);
    assert_eq!(containers.len(), 1);
    let proxy = &containers[0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        proxy["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );

    // The config comes from the ConfigMap, mounted where --config points.
    let args: Vec<&str> = list(&proxy["args"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args[..2], ["serve", "--config"]);
    let config_path = Path::new(args[2]);
    let volume_of = |mount: &Path| -> &Yaml {
        let m = list(&proxy["volumeMounts"])
            .iter()
            .find(|m| mount.starts_with(m["mountPath"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("nothing mounted at {}", mount.display()));
        list(&pod["volumes"])
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap()
    };
    let config_volume = volume_of(config_path);
    assert_eq!(
        config_volume["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let file_name = config_path.file_name().unwrap().to_str().unwrap();
    let config_text = config_map["data"][file_name].as_str().unwrap();
    assert_valid_config(config_text, "the ConfigMap's config file");
    let config = settings(config_text);

    // Secrets: the database URL from a Secret, the CA and the secrets key copied from Secrets.
    let db_env = list(&proxy["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some("AIBRIDGE_DATABASE_URL"))
        .expect("AIBRIDGE_DATABASE_URL set");
    assert!(db_env["valueFrom"]["secretKeyRef"]["name"]
        .as_str()
        .is_some());
    assert!(
        !config.contains_key("database-url"),
        "no database URL in the ConfigMap"
    );
    let init = list(&pod["initContainers"]);
    let copies = init
        .iter()
        .flat_map(|c| list(&c["command"]))
        .filter_map(Yaml::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    for key in ["ca-cert", "ca-key", "secrets-key-file", "admin-token-file"] {
        let path = config[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in the ConfigMap"));
        let copied = copies.split("&&").map(str::trim).any(|step| {
            step.contains("install -m 0600 /secrets/") && step.ends_with(&format!(" {path}"))
        });
        assert!(
            copied,
            "{key} ({path}) is not copied from a Secret with mode 0600"
        );
        assert!(
            volume_of(Path::new(path))["emptyDir"].is_hash(),
            "{path} is on the pod's own volume"
        );
    }
    let secret_volumes = list(&pod["volumes"])
        .iter()
        .filter(|v| v["secret"]["secretName"].as_str().is_some())
        .count();
    assert!(secret_volumes >= 2, "the CA and the keys come from Secrets");

    // Probes: readiness asks /readyz (the healthcheck subcommand), liveness /healthz.
    let readiness: Vec<&str> = list(&proxy["readinessProbe"]["exec"]["command"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(readiness[..2], ["/usr/bin/aibridge-proxy", "healthcheck"]);
    let liveness = &proxy["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"].as_str(), Some("/healthz"));
    let admin_port: i64 = config["admin-listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy_port: i64 = config["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let port_named = |name: &str| {
        list(&proxy["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
    };
    assert_eq!(
        port_named(liveness["port"].as_str().unwrap()),
        Some(admin_port)
    );
    assert_eq!(port_named("proxy"), Some(proxy_port));
    // healthcheck asks the default admin address unless told otherwise.
    let default_admin = aibridge_proxy::config::DEFAULT_ADMIN_LISTEN.port() as i64;
    assert!(readiness.contains(&"--admin") || admin_port == default_admin);

    // Termination outlives the drain and the preStop pause.
    let grace = duration_secs(&config, "shutdown-grace", "30s") as i64;
    let pre_stop = proxy["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    let termination = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        termination > grace + pre_stop,
        "{termination} <= {grace} + {pre_stop}"
    );
}

// --- dashboards and alerts ---------------------------------------------------------------

/// Every `aibridge_proxy_*` name in `text`, histogram suffixes folded to the family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("aibridge_proxy_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    let dashboard = read("grafana/aibridge-proxy.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let rules = read("prometheus/aibridge-proxy.rules.yaml");
    let rules_yaml = YamlLoader::load_from_str(&rules).unwrap();
    let alerts: Vec<&str> = list(&rules_yaml[0]["groups"][0]["rules"])
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    let mut named = metric_names(&dashboard);
    named.extend(metric_names(&rules));

    // A workload that makes every labelled family appear: a bridged request (minting a leaf),
    // a refused CONNECT, a failed handshake, an upstream that refuses.
    let env = Env::with(|o| {
        o.openai()
            .named_at("dead", "dead.example", "https://127.0.0.1:1".to_string())
    })
    .await;
    let client = env.client(Http::Two);
    let resp = client
        .post(CHAT)
        .body(r#"{"model":"gpt-4o-mini"}"#)
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    let resp = client
        .post("https://dead.example/v1/chat/completions")
        .body("{}")
        .call()
        .await;
    assert_eq!(resp.status(), 502);
    let wrong_token = agent_client(env.addr, "not-a-token", &[&env.ca_pem], Http::One);
    assert!(wrong_token.get(CHAT).send().await.is_err());
    let other_ca = TestCa::new();
    let untrusting = agent_client(env.addr, &env.token, &[&other_ca.cert_pem], Http::One);
    assert!(untrusting.get(CHAT).send().await.is_err());

    // The proxy counts a failed handshake when it sees the client's alert, after the client
    // has already given up: wait for it, boundedly.
    let mut missing: Vec<String> = Vec::new();
    for _ in 0..100 {
        let exported = metric_names(&env.metrics().await);
        missing = named.difference(&exported).cloned().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(missing.is_empty(), "named but not exported: {missing:?}");
    env.stop().await;

    if have("promtool") {
        // The rules parse, and fire on the series they should (and only those).
        for (verb, file) in [
            ("check", "prometheus/aibridge-proxy.rules.yaml"),
            ("test", "prometheus/aibridge-proxy.rules.test.yaml"),
        ] {
            let out = Command::new("promtool")
                .args([verb, "rules"])
                .arg(deploy(file))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        }
    }
}

// --- release -----------------------------------------------------------------------------

#[test]
fn the_release_tarball_holds_everything_and_its_sums_check() {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/release.sh");
    let run = Command::new("bash")
        .arg(&script)
        .env("AIBRIDGE_BIN", env!("CARGO_BIN_EXE_aibridge-proxy"))
        .env("OUT_DIR", out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let tarball = PathBuf::from(stdout(&run).trim());
    assert!(tarball.exists(), "{}", tarball.display());
    let unpacked = tempfile::tempdir().unwrap();
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(unpacked.path())
        .output()
        .unwrap();
    assert!(untar.status.success(), "{}", stderr(&untar));
    let root = std::fs::read_dir(unpacked.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for file in [
        "bin/aibridge-proxy",
        "man/aibridge-proxy-serve.1",
        "completions/aibridge-proxy.bash",
        "deploy/systemd/aibridge-proxy.service",
        "deploy/systemd/aibridge-proxy.sysusers",
        "deploy/container/Containerfile",
        "deploy/kubernetes/deployment.yaml",
        "deploy/kubernetes/kustomization.yaml",
        "deploy/grafana/aibridge-proxy.json",
        "deploy/prometheus/aibridge-proxy.rules.yaml",
        "aibridge-proxy.toml.sample",
        "README.md",
        "SHA256SUMS",
    ] {
        assert!(root.join(file).is_file(), "{file} missing from the tarball");
    }
    // Every file is listed, and every sum checks.
    let sums = std::fs::read_to_string(root.join("SHA256SUMS")).unwrap();
    assert!(sums.lines().count() >= 20, "{sums}");
    let check = Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    let version = Command::new(root.join("bin/aibridge-proxy"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        stdout(&version).starts_with("aibridge-proxy "),
        "{}",
        stdout(&version)
    );
    // The sample config is one `serve --config` accepts.
    assert_valid_config(
        &std::fs::read_to_string(root.join("aibridge-proxy.toml.sample")).unwrap(),
        "the sample config",
    );
}
