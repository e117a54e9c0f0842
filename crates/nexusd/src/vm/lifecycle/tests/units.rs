//! The spawn guard and the module-less command line, without processes of a VM.

use nix::sys::signal::Signal;

use super::super::{SpawnGuard, module_less_cmdline};

fn sleeper() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap()
}

#[test]
fn a_dropped_spawn_guard_kills_the_launched_processes() {
    let mut child = sleeper();

    drop(SpawnGuard::for_pids([child.id()].into_iter()));

    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(Signal::SIGKILL as i32)
    );
}

#[test]
fn a_disarmed_spawn_guard_leaves_the_processes_running() {
    let mut child = sleeper();

    SpawnGuard::for_pids([child.id()].into_iter()).disarm();

    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn module_less_boot_starts_the_agent_from_the_root_drive() {
    assert_eq!(
        module_less_cmdline("console=ttyS0 quiet".into()),
        "console=ttyS0 quiet init=/sbin/nexus-agent"
    );
}

#[test]
fn module_less_boot_keeps_an_explicit_init() {
    assert_eq!(
        module_less_cmdline("console=ttyS0 init=/bin/sh".into()),
        "console=ttyS0 init=/bin/sh"
    );
}
