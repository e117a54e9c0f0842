//! Starting a VM: a healthy boot, boots that fail before or after the VMM was spawned, and drives
//! that must not move while their VM starts.

use std::time::Duration;

use nexus_lib::api::{AttachDrive, Drive, VmState};

use super::{FakeHost, Timing};
use crate::drives::DriveError;
use crate::vm::VmError;
use crate::vmm::fake::{EXIT_AT_ONCE_CODE, FakeVmm, Guest};

/// How long a killed fake VMM gets to be seen gone.
const GONE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_healthy_guest_boots_to_running_and_powers_off_on_request() {
    let host = FakeHost::new(Guest::Healthy);
    host.vm("a").await;

    let running = host.lifecycle.start("a").await.unwrap();
    let stopped = host.lifecycle.stop("a").await.unwrap();

    assert_eq!(running.state, VmState::Running);
    assert_eq!(stopped.state, VmState::Stopped);
    let reason = host.reason("a").await;
    assert!(
        reason.starts_with("guest powered off on request (VMM exited with code 0)"),
        "{reason}"
    );
    assert!(host.vmm.all_exited_within(GONE).await);
}

#[tokio::test]
async fn failing_to_register_the_spawned_processes_kills_them_and_fails_the_vm() {
    let host = FakeHost::new(Guest::Healthy);
    host.vm("a").await;
    host.store
        .call(|c| {
            c.execute_batch(
                "CREATE TRIGGER refuse_runtime BEFORE INSERT ON vm_runtime
                 BEGIN SELECT RAISE(ABORT, 'injected: disk full'); END;",
            )?;
            Ok(())
        })
        .await
        .unwrap();

    let err = host.lifecycle.start("a").await.unwrap_err();

    assert!(matches!(err, VmError::BootFailed { .. }), "{err}");
    assert_eq!(host.state("a").await, VmState::Failed);
    let reason = host.reason("a").await;
    assert!(
        reason.starts_with("cannot register the VMM's processes (killed)"),
        "{reason}"
    );
    assert_eq!(host.vmm.pids().len(), 1);
    assert!(
        host.vmm.all_exited_within(GONE).await,
        "the VMM outlived the boot that could not register it"
    );
}

#[tokio::test]
async fn a_vmm_dying_during_boot_fails_the_vm_with_its_exit_and_console() {
    let host = FakeHost::new(Guest::ExitsAtOnce);
    host.vm("a").await;

    let err = host.lifecycle.start("a").await.unwrap_err();

    assert_eq!(host.state("a").await, VmState::Failed);
    let reason = host.reason("a").await;
    assert!(
        reason.starts_with(&format!(
            "VMM exited with code {EXIT_AT_ONCE_CODE} during boot; console: "
        )),
        "{reason}"
    );
    assert!(
        reason.contains("Kernel panic - not syncing: no init"),
        "{reason}"
    );
    assert!(err.to_string().ends_with(&reason), "{err}");
}

#[tokio::test]
async fn a_guest_that_never_answers_fails_at_the_boot_timeout_and_its_vmm_is_killed() {
    let timing = Timing {
        boot: Duration::from_millis(200),
        ..Timing::default()
    };
    let host = FakeHost::with(FakeVmm::new(Guest::NeverAnswers), timing);
    host.vm("a").await;

    let err = host.lifecycle.start("a").await.unwrap_err();

    assert!(matches!(err, VmError::BootFailed { .. }), "{err}");
    assert_eq!(host.state("a").await, VmState::Failed);
    let reason = host.reason("a").await;
    assert!(reason.contains("did not answer within"), "{reason}");
    assert!(host.vmm.all_exited_within(GONE).await);
}

/// A fake host whose VMM takes 300 ms to spawn, with VM `a`, its data drive `a-data` and a
/// loose drive `loose`; the start of `a` is under way (the VM is `starting`) on return.
async fn host_starting_a_slow_vm() -> (
    FakeHost,
    tokio::task::JoinHandle<Result<nexus_lib::api::Vm, VmError>>,
) {
    let vmm = FakeVmm::new(Guest::Healthy).spawning_after(Duration::from_millis(300));
    let host = FakeHost::with(vmm, Timing::default());
    let vm = host.vm("a").await;
    host.drive("a-data", Some(vm.id)).await;
    host.drive("loose", None).await;
    let lifecycle = host.lifecycle.clone();
    let start = tokio::spawn(async move { lifecycle.start("a").await });
    host.wait_for("a", VmState::Starting).await;
    (host, start)
}

/// A drive change made while VM `a` was starting was refused, and only once the VMM was spawned.
fn assert_waited_for_the_spawn_and_refused(host: &FakeHost, change: Result<Drive, DriveError>) {
    assert!(
        matches!(&change, Err(DriveError::Conflict(m)) if m.contains("stop the VM first")),
        "{change:?}"
    );
    assert_eq!(
        host.vmm.specs().len(),
        1,
        "the drive change did not wait for the VMM to be spawned"
    );
}

#[tokio::test]
async fn detaching_a_drive_while_its_vm_starts_waits_for_the_spawn_and_is_refused() {
    let (host, start) = host_starting_a_slow_vm().await;

    let detached = host.drives.detach("a-data").await;

    assert_waited_for_the_spawn_and_refused(&host, detached);
    let data = host.drives.get("a-data").await.unwrap();
    assert!(
        host.vmm.specs()[0].extra_drives[0]
            .path
            .starts_with(host.pool.get().unwrap().drive_dir(&data.id.to_string()))
    );
    assert_eq!(data.vm_id, Some(host.vms.get("a").await.unwrap().id));
    assert_eq!(start.await.unwrap().unwrap().state, VmState::Running);
}

#[tokio::test]
async fn attaching_a_drive_while_the_vm_starts_waits_for_the_spawn_and_is_refused() {
    let (host, start) = host_starting_a_slow_vm().await;
    let req = AttachDrive {
        vm: "a".into(),
        root: false,
    };

    let attached = host.drives.attach("loose", req).await;

    assert_waited_for_the_spawn_and_refused(&host, attached);
    assert_eq!(host.vmm.specs()[0].extra_drives.len(), 1);
    assert_eq!(host.drives.get("loose").await.unwrap().vm_id, None);
    assert_eq!(start.await.unwrap().unwrap().state, VmState::Running);
}

#[tokio::test]
async fn a_vm_boots_the_configured_guest_kernel_without_an_initramfs() {
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = dir.path().join("vmlinux");
    std::fs::write(&vmlinux, crate::assets::kernel_build::pvh_elf_fixture()).unwrap();
    let host = FakeHost::with_guest_kernel(Guest::Healthy, &vmlinux);
    host.vm("a").await;

    host.lifecycle.start("a").await.unwrap();

    let spec = host.vmm.specs().pop().unwrap();
    assert_eq!(spec.kernel, vmlinux);
    assert_eq!(spec.initrd, None);
    assert!(
        spec.cmdline.ends_with(" init=/sbin/nexus-agent"),
        "{}",
        spec.cmdline
    );
}

#[tokio::test]
async fn a_guest_kernel_that_qemu_cannot_enter_fails_the_start_before_any_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let bzimage = dir.path().join("bzImage");
    std::fs::write(&bzimage, b"MZ not an ELF").unwrap();
    let host = FakeHost::with_guest_kernel(Guest::Healthy, &bzimage);
    let vm = host.vm("a").await;

    let err = host.lifecycle.start("a").await.unwrap_err();

    assert!(matches!(err, VmError::Assets(_)), "{err:?}");
    let text = nexus_lib::error::error_chain(&err);
    assert!(text.contains("not an ELF file"), "{text}");
    assert!(host.vmm.specs().is_empty());
    assert_eq!(
        host.vms.get(&vm.name).await.unwrap().state,
        VmState::Created
    );
}
