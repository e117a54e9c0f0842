//! Tests of [`super`]: the JSON of each batch, and every batch applied by the real `nft` in a
//! network namespace of the test's own.

use super::*;

fn host() -> HostSpec {
    HostSpec {
        table: "nxt0".into(),
        bridge: "nxt0".into(),
        subnet: "10.77.0.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 77, 0, 1),
        uplink: Some("eth9".into()),
    }
}

fn vm(egress: EgressPolicy) -> VmRules {
    VmRules {
        key: 7,
        tap: "nxab127".into(),
        mac: "02:00:00:00:00:07".into(),
        ip: Ipv4Addr::new(10, 77, 0, 2),
        egress,
        epoch: 3,
        publish: vec![
            "8080:80".parse().unwrap(),
            "0.0.0.0:5353:53/udp".parse().unwrap(),
        ],
    }
}

fn text(b: &Batch) -> String {
    b.to_json().to_string()
}

#[test]
fn the_tables_masquerade_the_subnet_out_of_the_uplink_and_isolate_the_bridge() {
    let t = text(&create_tables(&host()));
    assert!(
        t.contains(r#"{"prefix":{"addr":"10.77.0.0","len":24}}"#),
        "{t}"
    );
    assert!(t.contains(r#""right":"eth9""#));
    assert!(t.contains(r#""data":"@egress""#));
    assert!(t.contains(r#"{"masquerade":null}"#));
    assert!(t.contains(r#""family":"bridge""#) && t.contains(r#""@ports""#));
}

#[test]
fn an_allow_list_vm_gets_its_sets_chain_and_publish_rules() {
    let v = vm(EgressPolicy::Allow {
        cidrs: vec![
            "192.0.2.0/24".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        ],
        domains: vec!["allowed.test".parse().unwrap()],
    });
    let t = text(&add_vm(&host(), &v));
    for needle in [
        r#""name":"vm_7_cidr""#,
        r#""flags":["interval"]"#,
        r#""flags":["timeout"]"#,
        r#"{"prefix":{"addr":"192.0.2.0","len":24}}"#,
        r#""198.51.100.7""#,
        r#""right":"@vm_7_dns""#,
        r#"{"mangle":{"key":{"ct":{"key":"mark"}},"value":3}}"#,
        r#"{"dnat":{"addr":"10.77.0.2","family":"ip","port":80}}"#,
        r#"{"fib":{"flags":["daddr"],"result":"type"}}"#,
        r#"{"concat":["udp",5353]}"#,
        r#"{"jump":{"target":"vm_7"}}"#,
        r#"{"concat":["nxab127","02:00:00:00:00:07","10.77.0.2"]}"#,
    ] {
        assert!(t.contains(needle), "{needle} missing in {t}");
    }
}

#[test]
fn deny_all_is_one_drop_after_the_established_rule() {
    let rules = egress_rules(&host(), &vm(EgressPolicy::DenyAll));
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[1]["expr"], json!([{ "drop": null }]));
}

#[test]
fn admitted_addresses_are_clamped() {
    let t = text(&allow_resolved(
        &host(),
        7,
        &[
            (Ipv4Addr::new(192, 0, 2, 1), Duration::from_secs(0)),
            (Ipv4Addr::new(192, 0, 2, 2), Duration::from_secs(1 << 30)),
        ],
    ));
    assert!(
        t.contains(r#""timeout":30"#) && t.contains(r#""timeout":86400"#),
        "{t}"
    );
    assert!(allow_resolved(&host(), 7, &[]).0.is_empty());
}

#[test]
fn removal_deletes_what_was_added() {
    let t = text(&remove_vm(&host(), &vm(EgressPolicy::AllowAll)));
    for needle in [
        r#""delete":{"chain""#,
        r#""delete":{"set""#,
        r#"{"concat":["tcp",8080]}"#,
    ] {
        assert!(t.contains(needle), "{needle} missing in {t}");
    }
}

/// Runs `f` on a thread of its own network namespace (so `nft` changes nothing of the
/// host), with a current-thread runtime.
fn in_netns<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F + Send + 'static) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the nftables tests need root (a network namespace of their own)"
    );
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f());
    })
    .join()
    .expect("test thread");
}

async fn ruleset() -> String {
    run(&["list", "ruleset"], None).await.unwrap()
}

#[test]
fn nft_takes_every_batch_and_removal_leaves_nothing() {
    in_netns(|| async {
        let h = host();
        apply(&create_tables(&h)).await.expect("tables");
        let mut v = vm(EgressPolicy::Allow {
            cidrs: vec!["192.0.2.0/24".parse().unwrap()],
            domains: vec!["allowed.test".parse().unwrap()],
        });
        apply(&add_vm(&h, &v)).await.expect("add_vm");
        apply(&allow_resolved(
            &h,
            v.key,
            &[(Ipv4Addr::new(198, 51, 100, 1), Duration::from_secs(300))],
        ))
        .await
        .expect("allow_resolved");
        let text = ruleset().await;
        assert!(
            text.contains("198.51.100.1") && text.contains("192.0.2.0/24"),
            "{text}"
        );
        assert!(text.contains("dnat ip to 10.77.0.2:80"), "{text}");
        // A rebuild keeps what the resolver admitted.
        rebuild(&h, std::slice::from_ref(&v), true)
            .await
            .expect("rebuild");
        assert!(ruleset().await.contains("198.51.100.1"));
        v.egress = EgressPolicy::DenyAll;
        v.epoch += 1;
        apply(&set_egress(&h, &v)).await.expect("set_egress");
        let text = ruleset().await;
        assert!(
            !text.contains("198.51.100.1") && !text.contains("192.0.2.0/24"),
            "{text}"
        );
        apply(&remove_vm(&h, &v)).await.expect("remove_vm");
        let text = ruleset().await;
        assert!(
            !text.contains("vm_7") && !text.contains("10.77.0.2"),
            "{text}"
        );
        assert!(delete_tables(&h.table).await.unwrap());
        assert!(!ruleset().await.contains("nxt0"));
        assert!(!delete_tables(&h.table).await.unwrap());
    });
}
