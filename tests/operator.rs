//! What operators and CI use: `--json`, `--check`, `--older-than`, `--verbose`, `--every`,
//! and the deployment files (systemd units, Kubernetes manifest).

use std::process::{Command, Stdio};
use std::time::Duration;

use rusqlite::params;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::util::{BIN, NO_NET_ADMIN, Proc, Reaped, Run, VmSpec, World, has_link, pid_alive, sh, wait_until};

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", r.stdout))
}

fn target<'v>(doc: &'v Value, id: &str) -> &'v Value {
    doc["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("no target {id} in {doc}"))
}

fn step<'v>(t: &'v Value, name: &str) -> &'v Value {
    t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap()
}

/// Each step says whether it removed something or found it already gone.
#[test]
fn json_says_which_steps_found_their_resources_already_gone() {
    let Some(mut w) = World::new("jsongone") else {
        return;
    };
    w.add(VmSpec::stale("vm-gone0001", 2));
    w.add(VmSpec::stale("vm-here0002", 3));
    sh("ip link del tap2");
    for f in ["vm-gone0001.log", "disks/vm-gone0001.ext4"] {
        std::fs::remove_file(w.data.join(f)).unwrap();
    }
    std::fs::remove_file(w.socket_path("vm-gone0001")).unwrap();
    let r = w.run(&["--json"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let doc = json(&r);
    let gone = target(&doc, "vm-gone0001");
    assert_eq!(step(gone, "tap")["state"], "already_gone");
    assert_eq!(step(gone, "nft")["state"], "removed");
    assert_eq!(step(gone, "files")["state"], "already_gone");
    assert_eq!(step(gone, "row")["state"], "removed");
    let here = target(&doc, "vm-here0002");
    for kind in ["tap", "nft", "files", "row"] {
        assert_eq!(step(here, kind)["state"], "removed", "{kind}");
    }
    assert!(!has_link("tap2") && !has_link("tap3"));
    assert!(w.ids().is_empty());
}

#[test]
fn json_reports_successes_a_failure_steps_and_hostile_strings() {
    let Some(mut w) = World::new("json") else { return };
    w.add(VmSpec::stale("vm-ok000001", 2));
    w.add(VmSpec {
        proc: Proc::Firecracker,
        updated_offset: -60,
        ..VmSpec::new("vm-late0001", "running", 3)
    });
    w.add(VmSpec::new("keepme", "created", 4));
    w.conn()
        .execute(
            "INSERT INTO vms VALUES (?1, 'running', '{}', NULL, 1, NULL, 'x', 'x')",
            params!["bad\"id\n\u{1}"],
        )
        .unwrap();
    let r = w.run(&["--json"]);
    let doc = json(&r);
    assert_eq!(r.code, 1);
    assert_eq!(doc["exit_code"], 1, "the document's exit code is the process's");
    assert_eq!(doc["mode"], "cleanup");
    assert_eq!(doc["prefix"], "vm-");
    assert_eq!(doc["state_dbs"][0]["read"], true);
    assert_eq!(doc["state_dbs"][0]["family"], "SmolVM");
    // Each phase of the run, in order, timed by the binary itself.
    let phases: Vec<&str> = doc["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["seconds"].as_f64().unwrap() >= 0.0);
            p["phase"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        phases,
        [
            "locate",
            "lock",
            "discover.dbs",
            "discover.processes",
            "discover.network",
            "discover.files",
            "discover.views",
            "reconcile",
            "plan",
            "discover.claims",
            "apply.processes",
            "apply.network",
            "apply.files",
            "apply.rows",
            "finish"
        ]
    );
    let v = w.run(&["-v", "--dry-run"]);
    assert!(
        v.stderr.contains("smolvm-cleanup: phases: locate ") && v.stderr.contains("ms, total "),
        "{}",
        v.stderr
    );
    // vm-late0001's socket is served: alive, so not stale, but a --prefix target.
    assert_eq!(doc["stale"], serde_json::json!(["vm-ok000001"]));
    assert_eq!(
        doc["summary"],
        serde_json::json!({"stale": 1, "targets": 2, "deleted": 1, "failed": 1, "other_hosts": 0})
    );
    assert_eq!(doc["incomplete"], serde_json::json!([]));
    assert_eq!(doc["missing_capabilities"], serde_json::json!([]));

    let ok = target(&doc, "vm-ok000001");
    assert_eq!(ok["outcome"], "deleted");
    assert_eq!(ok["error"], Value::Null);
    assert_eq!(ok["has_row"], true);
    assert_eq!(ok["resources"]["taps"], serde_json::json!(["tap2"]));
    assert_eq!(ok["resources"]["nft_rules"], 5);
    assert_eq!(step(ok, "process")["state"], "skipped");
    assert_eq!(step(ok, "tap")["state"], "removed");
    assert_eq!(step(ok, "nft")["state"], "removed");
    assert_eq!(step(ok, "files")["state"], "removed");
    assert_eq!(step(ok, "row")["state"], "removed");

    let late = target(&doc, "vm-late0001");
    assert_eq!(late["outcome"], "failed");
    assert!(
        late["error"]
            .as_str()
            .unwrap()
            .contains("started after its state row")
    );
    assert_eq!(step(late, "process")["state"], "failed");
    assert_eq!(step(late, "tap")["state"], "skipped");

    // A hostile id comes back intact through two layers of quoting.
    let warnings: Vec<&str> = doc["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains(r#""bad\"id\n\u{1}""#)),
        "{warnings:?}"
    );
    // The world agrees with the document.
    assert!(!has_link("tap2") && has_link("tap3") && has_link("tap4"));
    assert_eq!(w.ids().len(), 3);
}

#[test]
fn json_dry_run_plans_and_changes_nothing() {
    let Some(mut w) = World::new("jsondry") else {
        return;
    };
    w.add(VmSpec::stale("vm-ok000001", 2));
    w.add(VmSpec::new("keepme", "created", 4));
    let before = w.snapshot();
    let r = w.run(&["--json", "--dry-run"]);
    let doc = json(&r);
    assert_eq!((r.code, doc["exit_code"].as_i64()), (0, Some(0)));
    assert_eq!(doc["mode"], "dry_run");
    let t = target(&doc, "vm-ok000001");
    assert_eq!(t["outcome"], "would_delete");
    assert_eq!(t["stale"], true);
    assert!(t["stale_reason"].as_str().unwrap().contains("is gone"));
    assert_eq!(t["steps"], serde_json::json!([]));
    assert_eq!(doc["summary"]["deleted"], 0);
    w.snapshot().assert_same(&before);
}

#[test]
fn check_fails_on_leftovers_passes_after_cleanup_and_changes_nothing() {
    let Some(mut w) = World::new("check") else { return };
    w.add(VmSpec::stale("vm-left0001", 2));
    w.add(VmSpec::new("keepme", "created", 4));
    let before = w.snapshot();
    let r = w.run(&["--check"]);
    r.expect(
        1,
        "Leaked SmolVM resources (1):\n  - vm-left0001: TAP tap2, 5 nft rules, 3 files, state row\n",
    );
    let r = w.run(&["--check", "--json"]);
    let doc = json(&r);
    assert_eq!((r.code, doc["exit_code"].as_i64()), (1, Some(1)));
    assert_eq!(doc["mode"], "check");
    assert_eq!(target(&doc, "vm-left0001")["outcome"], "leaked");
    w.snapshot().assert_same(&before);

    assert_eq!(w.run(&[]).code, 0);
    w.run(&["--check"]).expect(0, "No leaked SmolVM resources.\n");
    let doc = json(&w.run(&["--check", "--json"]));
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["targets"], serde_json::json!([]));
    // keepme is protected by default, but --all or a matching prefix would take it.
    w.run(&["--check", "--all"]).expect(
        1,
        "Leaked SmolVM resources (1):\n  - keepme: TAP tap4, 5 nft rules, 2 files, state row\n",
    );
    assert_eq!(w.run(&["--check", "--prefix", "keep"]).code, 1);
}

#[test]
fn check_without_cap_net_admin_cannot_vouch() {
    let Some(mut w) = World::new("checkcap") else {
        return;
    };
    w.add(VmSpec::new("keepme", "created", 4));
    let out = w
        .cmd_via(
            &["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"],
            &["--check"],
        )
        .output()
        .unwrap();
    let r = Run::from(out);
    r.expect(
        1,
        &format!("{NO_NET_ADMIN}\nCheck incomplete: Permission denied: cannot list nftables rules\n"),
    );
}

#[test]
fn older_than_spares_a_fresh_row_and_takes_an_old_one() {
    let Some(mut w) = World::new("olderthan") else {
        return;
    };
    w.add(VmSpec {
        updated_offset: -3600,
        ..VmSpec::stale("vm-old00001", 2)
    });
    w.add(VmSpec::stale("vm-new00001", 3));
    w.add(VmSpec {
        updated_offset: -3600,
        ..VmSpec::new("vm-old00002", "stopped", 4)
    });
    w.run(&["--older-than", "10m"]).expect(
        0,
        "Reconciled stale VMs: vm-old00001\nTargets (2):\n  - vm-old00001\n  - vm-old00002\n\
         Deleted: vm-old00001\nDeleted: vm-old00002\nCleanup complete.\n",
    );
    assert_eq!(w.ids(), ["vm-new00001"]);
    assert!(has_link("tap3") && !has_link("tap2") && !has_link("tap4"));
    assert_eq!(
        w.status("vm-new00001").unwrap().0,
        "running",
        "a spared row is not even marked"
    );
    // Once old enough (here: any age), it goes too.
    w.run(&["--older-than", "0s"])
        .expect(0, "Reconciled stale VMs: vm-new00001\nTargets (1):\n  - vm-new00001\nDeleted: vm-new00001\nCleanup complete.\n");
}

#[test]
fn verbose_reports_each_step_on_stderr_without_colour_off_a_terminal() {
    let Some(mut w) = World::new("verbose") else {
        return;
    };
    w.add(VmSpec::running("vm-live0001", 2));
    let pid = w.vmm_pid("vm-live0001");
    let r = w.run(&["-v"]);
    r.expect(
        0,
        "Targets (1):\n  - vm-live0001\nDeleted: vm-live0001\nCleanup complete.\n",
    );
    for line in [
        "vm-live0001: target".to_string(),
        format!("vm-live0001: process (pid {pid}) removed"),
        "vm-live0001: tap (tap2) removed".into(),
        "vm-live0001: nft (5 rules) removed".into(),
        "vm-live0001: files (3 files) removed".into(),
        "vm-live0001: row (1 row) removed".into(),
    ] {
        assert!(r.stderr.contains(&line), "stderr lacks {line:?}:\n{}", r.stderr);
    }
    assert!(
        !r.stderr.contains('\x1b'),
        "no colour when stderr is not a terminal"
    );
    w.reap("vm-live0001");
}

#[test]
fn warnings_are_coloured_on_a_terminal_unless_no_color() {
    let Some(w) = World::new("colour") else { return };
    // A hostile row makes a warning.
    w.conn()
        .execute(
            "INSERT INTO vms VALUES ('../x', 'running', '{}', NULL, NULL, NULL, 'x', 'x')",
            [],
        )
        .unwrap();
    let on_tty = |no_color: Option<&str>| {
        // script(1) gives the run a pseudo-terminal; everything it printed comes back here.
        let cmd = format!(
            "{BIN} --state-dir {} --socket-dir {}",
            w.data.display(),
            w.sock.display()
        );
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]).env("TERM", "xterm");
        match no_color {
            Some(v) => c.env("NO_COLOR", v),
            None => c.env_remove("NO_COLOR"),
        };
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };
    let coloured = on_tty(None);
    assert!(
        coloured.contains("\x1b[33mwarning\x1b[0m: refusing a state row"),
        "{coloured:?}"
    );
    assert!(coloured.contains("No matching VMs to clean."));
    let plain = on_tty(Some("1"));
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(plain.contains("warning: refusing a state row"));
}

#[test]
fn every_runs_again_until_sigterm() {
    let Some(mut w) = World::new("every") else { return };
    w.add(VmSpec::stale("vm-one00001", 2));
    let mut child = Reaped(
        w.cmd(&["--every", "200ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the first run", Duration::from_secs(10), || !has_link("tap2"));
    w.add(VmSpec::stale("vm-two00001", 3));
    wait_until("a later run", Duration::from_secs(10), || w.ids().is_empty());
    assert!(!has_link("tap3"));
    sh(&format!("kill -TERM {}", child.id()));
    wait_until("exit on SIGTERM", Duration::from_secs(5), || {
        child.try_wait().unwrap().is_some()
    });
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!pid_alive(child.id()));
}

/// A run that is the process's last leaves what it read to the exit (`Survey::release`);
/// with `--every` each run frees it, so a long-lived process does not grow run by run.
#[test]
fn every_frees_what_each_run_read() {
    let Some(w) = World::new("every-rss") else { return };
    let c = w.conn();
    let now = crate::util::now_iso(0);
    for i in 0..500 {
        c.execute(
            "INSERT INTO vms (id, status, config, network, pid, socket_path, created_at, updated_at) \
             VALUES (?1, 'stopped', '{\"backend\":\"firecracker\"}', NULL, NULL, NULL, ?2, ?2)",
            params![format!("keep-{i:04}"), now],
        )
        .unwrap();
    }
    drop(c);
    let child = Reaped(
        w.cmd(&["--every", "10ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rss_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    std::thread::sleep(Duration::from_secs(1));
    let early = rss_kib();
    std::thread::sleep(Duration::from_secs(2));
    let late = rss_kib();
    // Keeping each run's 500 rows would add about 100 KiB a run, over a hundred runs.
    assert!(late < early + 2048, "RSS grew from {early} to {late} KiB");
    assert_eq!(w.ids().len(), 500, "the stopped VMs are kept");
    sh(&format!("kill -TERM {}", child.id()));
}

#[test]
fn systemd_units_verify() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed here");
        return;
    }
    let dir = crate::util::Scratch::new("systemd");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd");
    let service = std::fs::read_to_string(format!("{root}/smolvm-cleanup.service")).unwrap();
    // Found on systemd's search path, wherever it was installed (/usr/local/bin, /usr/bin).
    assert!(service.contains("ExecStart=smolvm-cleanup "));
    // verify checks that ExecStart exists: point it at the binary under test (the .deb's
    // own unit is verified in a Debian root with the package installed, by ci/deb-check).
    std::fs::write(
        dir.0.join("smolvm-cleanup.service"),
        service.replace("ExecStart=smolvm-cleanup ", &format!("ExecStart={BIN} ")),
    )
    .unwrap();
    std::fs::copy(
        format!("{root}/smolvm-cleanup.timer"),
        dir.0.join("smolvm-cleanup.timer"),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.0.join("smolvm-cleanup.service"))
        .arg(dir.0.join("smolvm-cleanup.timer"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifest_parses_and_runs_on_the_hosts_namespaces() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d["kind"].as_str(), Some("DaemonSet"));
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--every"), "{args:?}");
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(caps.contains(&"NET_ADMIN") && caps.contains(&"KILL"), "{caps:?}");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(
        mounts,
        ["/var/lib/smolvm", "/var/lib/celesto", "/tmp", "/textfile"]
    );
    // Its metrics go to the node's textfile collector directory.
    let at = args
        .iter()
        .position(|a| *a == "--metrics-file")
        .expect("--metrics-file");
    assert!(args[at + 1].starts_with("/textfile/"), "{args:?}");
    // The selector matches the pod's labels, or the DaemonSet is rejected.
    assert_eq!(
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    );
}

/// The Python that has `prometheus_client` (ci/test makes a venv and says where).
fn prometheus_python() -> Option<String> {
    match std::env::var("SMOLVM_CLEANUP_PROM_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                std::env::var("SMOLVM_CLEANUP_ALLOW_SKIP").is_ok_and(|v| v == "1"),
                "SMOLVM_CLEANUP_PROM_PYTHON must name a python with prometheus_client (ci/test sets it)"
            );
            eprintln!("SKIPPED (no prometheus_client): metrics parse test");
            None
        }
    }
}

/// --metrics-file: Prometheus text that the real client library parses, with the numbers
/// of the run, written atomically (no temporary file is left).
#[test]
fn metrics_file_parses_as_prometheus_text_with_the_runs_numbers() {
    let Some(mut w) = World::new("metrics") else {
        return;
    };
    let Some(python) = prometheus_python() else { return };
    w.add(VmSpec::stale("vm-met00001", 2));
    w.add(VmSpec::stale("vm-met00002", 3));
    w.add(VmSpec::new("keepme", "created", 4));
    let dir = w.scratch.0.join("textfile");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("smolvm_cleanup.prom");
    let parse = || {
        let out = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/parse_metrics.py"
            ))
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let check = w.run(&["--check", "--metrics-file", file.to_str().unwrap()]);
    assert_eq!(check.code, 1);
    let text = parse();
    assert!(
        text.contains("smolvm_cleanup_last_run_success{mode=check} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("smolvm_cleanup_last_run_resources{kind=tap,mode=check} 2\n"),
        "{text}"
    );
    let r = w.run(&["--metrics-file", file.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let text = parse();
    for want in [
        "type smolvm_cleanup_last_run_timestamp_seconds gauge",
        "smolvm_cleanup_last_run_success{mode=cleanup} 1",
        "smolvm_cleanup_last_run_targets{mode=cleanup} 2",
        "smolvm_cleanup_last_run_deleted_vms{mode=cleanup} 2",
        "smolvm_cleanup_last_run_failed_vms{mode=cleanup} 0",
        "smolvm_cleanup_last_run_resources{kind=tap,mode=cleanup} 2",
        "smolvm_cleanup_last_run_resources{kind=nft_rule,mode=cleanup} 10",
        "smolvm_cleanup_last_run_resources{kind=state_row,mode=cleanup} 2",
    ] {
        assert!(text.lines().any(|l| l == want), "lacks {want:?}:\n{text}");
    }
    // The world agrees, and the textfile dir holds the one file.
    assert!(!has_link("tap2") && !has_link("tap3") && has_link("tap4"));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("smolvm_cleanup.prom")]);
}

fn yaml(rel: &str) -> Yaml {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Every `run:` of a workflow's or action's steps, joined.
fn runs(steps: &Yaml) -> String {
    steps
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// No GitHub runner is reachable here: the workflows and the action are checked for the
/// keys GitHub requires, and the action's steps for files the release produces.
#[test]
fn github_workflows_and_the_action_are_well_formed() {
    let ci = yaml(".github/workflows/ci.yml");
    assert!(!ci["on"].is_badvalue());
    let job = &ci["jobs"]["test"];
    assert!(job["runs-on"].as_str().unwrap().starts_with("ubuntu"));
    assert!(runs(&job["steps"]).contains("sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME ./ci/test"));

    let release = yaml(".github/workflows/release.yml");
    let tags: Vec<&str> = release["on"]["push"]["tags"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(tags, ["v*"]);
    assert_eq!(release["permissions"]["contents"].as_str(), Some("write"));
    let steps = runs(&release["jobs"]["release"]["steps"]);
    assert!(
        steps.contains("./ci/release") && steps.contains("gh release upload") && steps.contains("dist/*")
    );
    // The image job: the context ci/image stages from dist/, both platforms, pushed under
    // the repository's own name to its registry.
    let image = &release["jobs"]["image"];
    assert_eq!(image["needs"].as_str(), Some("release"));
    assert_eq!(release["permissions"]["packages"].as_str(), Some("write"));
    assert!(runs(&image["steps"]).contains("./ci/image --context"));
    assert!(runs(&image["steps"]).contains("ghcr.io/${GITHUB_REPOSITORY,,}"));
    let push = image["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("docker/build-push-action"))
        })
        .expect("a build-push step");
    assert_eq!(
        push["with"]["platforms"].as_str(),
        Some("linux/amd64,linux/arm64")
    );
    assert_eq!(push["with"]["file"].as_str(), Some("deploy/image/Dockerfile"));
    assert_eq!(push["with"]["context"].as_str(), Some("target/image-context"));

    let action = yaml("action.yml");
    assert!(action["name"].as_str().is_some() && action["description"].as_str().is_some());
    assert_eq!(action["runs"]["using"].as_str(), Some("composite"));
    for input in ["args", "version"] {
        assert!(
            action["inputs"][input]["description"].as_str().is_some(),
            "{input}"
        );
    }
    let steps = &action["runs"]["steps"];
    for s in steps.as_vec().unwrap() {
        assert!(s["shell"].as_str().is_some(), "a composite step needs a shell");
    }
    let run = runs(steps);
    assert!(run.contains("$GITHUB_ACTION_PATH/action/install.sh"), "{run}");
    assert!(
        run.contains("sudo \"${{ steps.install.outputs.path }}\" ${{ inputs.args }}"),
        "{run}"
    );
    // The install script asks for the names ci/release writes, and is executable.
    let root = env!("CARGO_MANIFEST_DIR");
    let install = std::fs::read_to_string(format!("{root}/action/install.sh")).unwrap();
    let release_sh = std::fs::read_to_string(format!("{root}/ci/release")).unwrap();
    assert!(
        install.contains("smolvm-cleanup-$version-$target")
            && release_sh.contains("smolvm-cleanup-$version-$target")
    );
    assert!(install.contains("SHA256SUMS") && release_sh.contains("SHA256SUMS"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(format!("{root}/action/install.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "action/install.sh is not executable");
}

/// Files and rows go while the kernel deletes TAPs, and the rows commit only for VMs
/// whose every resource went. Here one VM's per-TAP policy table belongs to another
/// netlink socket (nf_tables' `owner` flag: only that socket may delete it), so with full
/// privileges its delete is refused: that VM keeps its row (marked as SmolVM would), the
/// JSON says its TAP and files went, and the other VM, deleted in the same transaction
/// first, is gone whole. Once the owner lets go, the next run finishes the job.
#[test]
fn a_vm_whose_nft_delete_is_refused_keeps_its_row_and_says_its_files_went() {
    let Some(mut w) = World::new("overlapfail") else {
        return;
    };
    w.add(VmSpec::stale("vm-held0001", 2));
    w.add(VmSpec::stale("vm-free0002", 3));
    let mut owner = Command::new("nft")
        .arg("-i")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = owner.stdin.as_mut().unwrap();
        writeln!(stdin, "add table inet smolvm_policy_tap2 {{ flags owner; }}").unwrap();
        writeln!(
            stdin,
            "add chain inet smolvm_policy_tap2 forward {{ type filter hook forward priority -10; policy accept; }}"
        )
        .unwrap();
        stdin.flush().unwrap();
    }
    wait_until("the owned table", Duration::from_secs(5), || {
        crate::util::ruleset().contains("smolvm_policy_tap2")
    });

    let r = w.run(&["--json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let doc = json(&r);
    let held = target(&doc, "vm-held0001");
    assert_eq!(step(held, "nft")["state"], "failed");
    assert!(
        held["error"].as_str().unwrap().contains("smolvm_policy_tap2"),
        "{held}"
    );
    assert_eq!(step(held, "tap")["state"], "removed");
    assert_eq!(step(held, "files")["state"], "removed", "what of it went is said");
    assert_eq!(step(held, "row")["state"], "skipped");
    let free = target(&doc, "vm-free0002");
    for kind in ["tap", "nft", "files", "row"] {
        assert_eq!(step(free, kind)["state"], "removed", "{kind}");
    }
    assert!(!has_link("tap2") && !has_link("tap3"));
    // The refused table stays, the rules of both VMs went (the batch was sent again
    // without the op that aborted it).
    assert!(crate::util::ruleset().contains("table inet smolvm_policy_tap2"));
    let left: Vec<String> = crate::util::comments()
        .into_iter()
        .filter(|c| c.contains("vm-") || c.contains(":tap:"))
        .collect();
    assert!(left.is_empty(), "VM rules left: {left:?}");
    assert!(!w.data.join("vm-held0001.log").exists());
    assert!(!w.data.join("disks/vm-held0001.ext4").exists());
    assert!(!w.data.join("vm-free0002.log").exists());
    assert_eq!(
        w.ids(),
        ["vm-held0001"],
        "the failed VM's row stays, the other's went"
    );
    assert_eq!(w.status("vm-held0001"), Some(("error".into(), None)));
    assert_eq!(w.child_rows("ip_leases"), ["vm-held0001"], "its row is whole");

    drop(owner.stdin.take());
    owner.wait().unwrap();
    w.run(&[]).expect(
        0,
        "Reconciled stale VMs: vm-held0001\nTargets (1):\n  - vm-held0001\nDeleted: vm-held0001\nCleanup complete.\n",
    );
    assert!(w.ids().is_empty());
}
