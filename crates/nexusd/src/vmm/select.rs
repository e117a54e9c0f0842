//! Backend selection: `vmm = "auto" | "firecracker" | "qemu"`. `auto` picks Firecracker where a
//! binary and a working KVM exist, QEMU otherwise. Host facts come in as a [`HostProbe`] so the
//! decision is testable without the host.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::firecracker::is_executable;
use super::{Accel, VmmError, VmmKind, detect_accel};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmChoice {
    #[default]
    Auto,
    Firecracker,
    Qemu,
}

impl FromStr for VmmChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "firecracker" => Ok(Self::Firecracker),
            "qemu" => Ok(Self::Qemu),
            other => Err(format!(
                "unknown vmm {other:?}: expected auto, firecracker or qemu"
            )),
        }
    }
}

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// A Firecracker binary, when one is installed.
    pub firecracker: Option<PathBuf>,
    pub accel: Accel,
}

impl HostProbe {
    /// Probes the real host: the first executable among `firecracker_candidates`, and
    /// [`detect_accel`] on `/dev/kvm` and `/sys/module/kvm_pvm`.
    pub fn detect(firecracker_candidates: &[PathBuf]) -> Self {
        Self {
            firecracker: firecracker_candidates
                .iter()
                .find(|p| is_executable(p))
                .cloned(),
            accel: detect_accel(Path::new("/dev/kvm"), Path::new("/sys/module/kvm_pvm")),
        }
    }
}

/// Resolves a choice against the host; an explicit Firecracker request that cannot work is an error.
pub fn select_backend(choice: VmmChoice, probe: &HostProbe) -> Result<VmmKind, VmmError> {
    let firecracker_ok = probe.firecracker.is_some() && probe.accel == Accel::Kvm;
    match choice {
        VmmChoice::Qemu => Ok(VmmKind::Qemu),
        VmmChoice::Auto if firecracker_ok => Ok(VmmKind::Firecracker),
        VmmChoice::Auto => Ok(VmmKind::Qemu),
        VmmChoice::Firecracker if probe.firecracker.is_none() => Err(VmmError::FirecrackerMissing),
        VmmChoice::Firecracker if probe.accel != Accel::Kvm => Err(VmmError::KvmUnusable {
            reason: "/dev/kvm cannot be opened or is the paravirtual kvm_pvm".into(),
        }),
        VmmChoice::Firecracker => Ok(VmmKind::Firecracker),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(firecracker: bool, accel: Accel) -> HostProbe {
        HostProbe {
            firecracker: firecracker.then(|| PathBuf::from("/usr/bin/firecracker")),
            accel,
        }
    }

    #[test]
    fn auto_picks_firecracker_with_binary_and_kvm() {
        assert_eq!(
            select_backend(VmmChoice::Auto, &probe(true, Accel::Kvm)).unwrap(),
            VmmKind::Firecracker
        );
    }

    #[test]
    fn auto_picks_qemu_without_kvm() {
        assert_eq!(
            select_backend(VmmChoice::Auto, &probe(true, Accel::Tcg)).unwrap(),
            VmmKind::Qemu
        );
    }

    #[test]
    fn auto_picks_qemu_without_firecracker_binary() {
        assert_eq!(
            select_backend(VmmChoice::Auto, &probe(false, Accel::Kvm)).unwrap(),
            VmmKind::Qemu
        );
    }

    #[test]
    fn explicit_qemu_is_always_qemu() {
        assert_eq!(
            select_backend(VmmChoice::Qemu, &probe(true, Accel::Kvm)).unwrap(),
            VmmKind::Qemu
        );
    }

    #[test]
    fn explicit_firecracker_without_binary_is_an_error() {
        let err = select_backend(VmmChoice::Firecracker, &probe(false, Accel::Kvm)).unwrap_err();
        assert!(matches!(err, VmmError::FirecrackerMissing));
    }

    #[test]
    fn explicit_firecracker_without_kvm_is_an_error() {
        let err = select_backend(VmmChoice::Firecracker, &probe(true, Accel::Tcg)).unwrap_err();
        assert!(matches!(err, VmmError::KvmUnusable { .. }));
    }

    #[test]
    fn choice_parses_from_config_string() {
        assert_eq!(
            "firecracker".parse::<VmmChoice>().unwrap(),
            VmmChoice::Firecracker
        );
        assert!("kvm".parse::<VmmChoice>().is_err());
    }
}
