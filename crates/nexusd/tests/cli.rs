//! The real `nexusctl` against the real `nexusd`: grammar, output and exit codes.

mod common;

use common::{TestDaemon, ctl, stderr, stdout};

#[test]
fn create_list_show_delete_round_trip() {
    let d = TestDaemon::start();
    let created = d.ctl(&["vm", "create", "web-1", "--vcpus", "2", "--memory", "512"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let list = stdout(&d.ctl(&["vm", "list"]));
    assert!(list.contains("web-1") && list.contains("created"), "{list}");
    let show = d.ctl(&["--json", "vm", "show", "web-1"]);
    let vm: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(
        (vm["vcpus"].as_u64(), vm["memory_mib"].as_u64()),
        (Some(2), Some(512))
    );
    let deleted = d.ctl(&["vm", "delete", "web-1"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&d.ctl(&["--json", "vm", "list"]).stdout).unwrap();
    assert!(list.is_empty());
}

#[test]
fn duplicate_name_exits_5() {
    let d = TestDaemon::start();
    assert!(d.ctl(&["vm", "create", "dup"]).status.success());
    let again = d.ctl(&["vm", "create", "dup"]);
    assert_eq!(again.status.code(), Some(5), "{}", stderr(&again));
    assert!(stderr(&again).contains("already exists"));
}

#[test]
fn unknown_vm_exits_4() {
    let d = TestDaemon::start();
    for verb in ["show", "delete", "history"] {
        let out = d.ctl(&["vm", verb, "ghost"]);
        assert_eq!(out.status.code(), Some(4), "{verb}: {}", stderr(&out));
    }
}

#[test]
fn invalid_input_exits_2_and_names_the_field() {
    let d = TestDaemon::start();
    let out = d.ctl(&["vm", "create", "ok", "--vcpus", "64"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("vcpus"), "{}", stderr(&out));
}

#[test]
fn daemon_down_exits_3_with_start_hint() {
    let home = tempfile::tempdir().unwrap();
    let out = ctl(home.path(), &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("nexusd is not running"), "{err}");
    assert!(err.contains("systemctl --user start nexus"), "{err}");
}

#[test]
fn history_lists_the_creation() {
    let d = TestDaemon::start();
    d.ctl(&["vm", "create", "h1"]);
    let h: Vec<serde_json::Value> =
        serde_json::from_slice(&d.ctl(&["--json", "vm", "history", "h1"]).stdout).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["to"], "created");
    assert!(h[0]["at_ms"].as_i64().unwrap() > 0);
}

#[test]
fn status_reports_version_and_schema() {
    let d = TestDaemon::start();
    let out = d.ctl(&["--json", "status"]);
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["database"]["schema_version"], 2);
}

#[test]
fn bad_usage_exits_2() {
    let home = tempfile::tempdir().unwrap();
    assert_eq!(
        ctl(home.path(), &["vm", "frobnicate"]).status.code(),
        Some(2)
    );
}
