//! Managed API tokens, end to end: created, listed and revoked through the real `nexusctl`,
//! used on the real TCP listener through the typed client. A scoped token sees and touches only
//! its VMs in the REST API (its MCP side is in tests/mcp.rs).

mod common;

use common::{TestDaemon, ctl_json, rt, stderr, tcp_addr, tcp_daemon};
use nexus_lib::api::{CreateDrive, CreateVm};
use nexus_lib::client::{Client, ClientError};

/// A daemon with VM records `mine` and `theirs`, and a token for `mine` (with `extra` flags).
fn scoped(extra: &[&str]) -> (TestDaemon, Client, String) {
    let d = tcp_daemon(&[]);
    for vm in ["mine", "theirs"] {
        let out = d.ctl(&["vm", "create", vm]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut args = vec!["token", "create", "--vm", "mine", "--name", "agent-1"];
    args.extend_from_slice(extra);
    let created = ctl_json(&d, &args);
    let secret = created["token"].as_str().expect("token field").to_owned();
    let id = created["id"].as_str().expect("id field").to_owned();
    let client = Client::tcp(tcp_addr(&d), secret);
    (d, client, id)
}

fn status(result: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match result {
        Err(e) => e.status().unwrap_or(0),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn named(name: &str) -> CreateVm {
    CreateVm {
        name: name.into(),
        ..CreateVm::default()
    }
}

/// The names of the VMs `client` is shown.
fn vm_names(rt: &tokio::runtime::Runtime, client: &nexus_lib::client::Client) -> Vec<String> {
    rt.block_on(client.list_vms(None))
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect()
}

#[test]
fn a_scoped_token_lists_and_reads_only_its_vms() {
    let (_d, client, _) = scoped(&[]);
    let rt = rt();

    let names = vm_names(&rt, &client);

    assert_eq!(names, ["mine"]);
    assert!(rt.block_on(client.get_vm("mine")).is_ok());
    assert_eq!(status(rt.block_on(client.get_vm("theirs"))), 404);
    assert_eq!(status(rt.block_on(client.vm_history("theirs"))), 404);
    assert_eq!(
        status(rt.block_on(client.vm_action("theirs", "start"))),
        404
    );
}

#[test]
fn a_scoped_token_cannot_create_or_delete_vms_without_lifecycle() {
    let (_d, client, _) = scoped(&[]);
    let rt = rt();

    assert_eq!(status(rt.block_on(client.create_vm(&named("new")))), 403);
    assert_eq!(status(rt.block_on(client.delete_vm("mine", false))), 403);
    assert_eq!(status(rt.block_on(client.delete_vm("theirs", false))), 404);
}

#[test]
fn a_lifecycle_token_creates_vms_into_its_scope_and_deletes_them() {
    let (_d, client, _) = scoped(&["--lifecycle"]);
    let rt = rt();

    rt.block_on(client.create_vm(&named("made"))).unwrap();
    let names = vm_names(&rt, &client);
    rt.block_on(client.delete_vm("made", false)).unwrap();

    assert_eq!(names, ["mine", "made"]);
    assert_eq!(status(rt.block_on(client.delete_vm("theirs", false))), 404);
}

#[test]
fn a_scoped_token_reaches_nothing_but_vms_and_images() {
    let (_d, client, _) = scoped(&["--lifecycle"]);
    let rt = rt();

    assert!(rt.block_on(client.list_images()).is_ok());
    assert!(rt.block_on(client.health()).is_ok());
    assert_eq!(status(rt.block_on(client.list_drives())), 403);
    assert_eq!(status(rt.block_on(client.network())), 403);
    let open_up = nexus_lib::api::UpdateVmNetwork {
        egress: nexus_lib::api::EgressPolicy::AllowAll,
    };
    assert_eq!(
        status(rt.block_on(client.update_vm_network("mine", &open_up))),
        403
    );
    assert_eq!(status(rt.block_on(client.list_tokens())), 403);
    let drive = CreateDrive {
        image: "x".into(),
        ..CreateDrive::default()
    };
    assert_eq!(status(rt.block_on(client.create_drive(&drive))), 403);
}

#[test]
fn a_revoked_token_is_refused_and_the_configured_token_still_sees_everything() {
    let (d, client, id) = scoped(&[]);
    let rt = rt();

    let out = d.ctl(&["token", "revoke", &id]);
    assert!(out.status.success(), "{}", stderr(&out));

    assert_eq!(status(rt.block_on(client.list_vms(None))), 401);
    let admin = Client::tcp(tcp_addr(&d), common::TCP_TOKEN);
    assert_eq!(rt.block_on(admin.list_vms(None)).unwrap().len(), 2);
}

#[test]
fn token_list_shows_scopes_but_never_secrets() {
    let (d, _, id) = scoped(&["--lifecycle"]);

    let listed = ctl_json(&d, &["token", "list"]);
    let text = listed.to_string();

    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["vms"], serde_json::json!(["mine"]));
    assert_eq!(listed[0]["lifecycle"], true);
    assert!(!text.contains("nxt_"), "{text}");
}

#[test]
fn a_token_for_a_missing_vm_is_refused() {
    let d = TestDaemon::start();

    let out = d.ctl(&["token", "create", "--vm", "ghost"]);

    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("ghost"), "{}", stderr(&out));
}
