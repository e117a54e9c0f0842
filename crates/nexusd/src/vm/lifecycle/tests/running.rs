//! A running VM: its guest stalling an API request or crashing, stops that escalate, and its
//! VMM re-adopted (or recorded as gone) by the daemon after a restart.

use std::time::Duration;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use nexus_lib::agent::ExecEvent;
use nexus_lib::api::VmState;
use tower::ServiceExt;

use super::{FakeHost, Timing};
use crate::vmm::fake::{CRASH_CODE, EXEC_CANCELLED_LINE, FakeVmm, Guest};

#[tokio::test]
async fn exec_output_stalling_mid_stream_releases_the_api_request_at_its_timeout() {
    let host = FakeHost::running(FakeVmm::new(Guest::StallsExec), Timing::default()).await;
    let vm = host.vms.get("a").await.unwrap();
    let req = Request::post("/v1/vms/a/exec")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"argv":["sleep","600"],"timeout_ms":1}"#))
        .unwrap();

    let resp = crate::api::router(host.app_state())
        .oneshot(req)
        .await
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("the API request was not released")
        .unwrap()
        .to_bytes();

    let lines: Vec<ExecEvent> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert!(
        matches!(
            lines.as_slice(),
            [ExecEvent::Stdout { .. }, ExecEvent::Error { .. }]
        ),
        "{lines:?}"
    );
    let cancelled = tokio::time::timeout(Duration::from_secs(5), async {
        while !host.console(&vm).contains(EXEC_CANCELLED_LINE) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(cancelled.is_ok(), "the guest never saw its stream reset");
}

#[tokio::test]
async fn a_vmm_exiting_unasked_is_recorded_as_crashed_with_its_console() {
    let vmm = FakeVmm::new(Guest::CrashesAfter(Duration::from_secs(1)));
    let host = FakeHost::running(vmm, Timing::default()).await;

    host.wait_for("a", VmState::Crashed).await;

    let reason = host.reason("a").await;
    assert!(
        reason.starts_with(&format!(
            "VMM exited with code {CRASH_CODE} unasked; console: "
        )),
        "{reason}"
    );
    assert!(reason.contains("fake-vmm: guest crashed"), "{reason}");
    assert!(host.lifecycle.agent("a").await.is_err());
}

#[tokio::test]
async fn stop_terminates_a_vmm_whose_guest_ignores_the_poweroff() {
    let timing = Timing {
        stop: Duration::from_millis(100),
        ..Timing::default()
    };
    let host = FakeHost::running(FakeVmm::new(Guest::IgnoresPoweroff), timing).await;

    let stopped = host.lifecycle.stop("a").await.unwrap();

    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(
        host.reason("a").await,
        "guest did not power off within 100ms; VMM terminated (VMM killed by signal SIGTERM)"
    );
}

#[tokio::test]
async fn stop_kills_a_vmm_that_ignores_the_poweroff_and_sigterm() {
    let timing = Timing {
        stop: Duration::from_millis(100),
        term_grace: Duration::from_millis(100),
        ..Timing::default()
    };
    let vmm = FakeVmm::new(Guest::IgnoresPoweroffAndSigterm);
    let host = FakeHost::running(vmm, timing).await;
    let vm = host.vms.get("a").await.unwrap();

    let stopped = host.lifecycle.stop("a").await.unwrap();

    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(
        host.reason("a").await,
        "VMM ignored SIGTERM; killed (VMM killed by signal SIGKILL)"
    );
    assert!(host.console(&vm).contains("fake-vmm: ignoring SIGTERM"));
}

/// A runtime of its own: dropping it is the daemon going away (its tasks end, the VMM stays).
fn daemon_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A host whose VM `a` was started by a daemon that is gone since (its runtime dropped).
fn started_by_a_daemon_now_gone() -> FakeHost {
    let before = daemon_runtime();
    before.block_on(FakeHost::running(
        FakeVmm::new(Guest::Healthy),
        Timing::default(),
    ))
}

#[test]
fn a_running_vm_is_readopted_after_a_restart_and_stops_on_request() {
    let host = started_by_a_daemon_now_gone();
    let after = daemon_runtime();

    let (state, hostname, stopped) = after.block_on(async {
        let restarted = host.restarted();
        restarted.recover().await.unwrap();
        let state = host.state("a").await;
        let (_, agent) = restarted.agent("a").await.unwrap();
        let info = agent.info().await.unwrap();
        (state, info.hostname, restarted.stop("a").await.unwrap())
    });

    assert_eq!(state, VmState::Running);
    assert_eq!(hostname, "fake");
    assert_eq!(stopped.state, VmState::Stopped);
    let reason = after.block_on(host.reason("a"));
    assert!(
        reason.starts_with("guest powered off on request (VMM exited (status unknown"),
        "{reason}"
    );
}

#[test]
fn a_vmm_gone_while_the_daemon_was_down_is_recorded_as_crashed() {
    let host = started_by_a_daemon_now_gone();
    host.vmm.kill_all();
    let after = daemon_runtime();

    after.block_on(async {
        assert!(host.vmm.all_exited_within(Duration::from_secs(5)).await);
        host.restarted().recover().await.unwrap();
    });

    assert_eq!(after.block_on(host.state("a")), VmState::Crashed);
    let reason = after.block_on(host.reason("a"));
    assert!(
        reason.starts_with("VMM exited while nexusd was not running; console: "),
        "{reason}"
    );
}
