//! Which accelerator QEMU may use. `/dev/kvm` being openable is not enough: on hosts whose KVM is
//! the paravirtual `kvm_pvm`, stock guest kernels hang, so its presence means TCG.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// KVM when `dev_kvm` opens read-write and `kvm_pvm_module` (normally `/sys/module/kvm_pvm`)
/// does not exist; TCG otherwise.
pub fn detect_accel(dev_kvm: &Path, kvm_pvm_module: &Path) -> Accel {
    let openable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
        .is_ok();
    if openable && !kvm_pvm_module.exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openable_kvm_without_pvm_is_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        assert_eq!(detect_accel(&kvm, &dir.path().join("kvm_pvm")), Accel::Kvm);
    }

    #[test]
    fn kvm_pvm_module_means_tcg() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        assert_eq!(detect_accel(&kvm, dir.path()), Accel::Tcg);
    }

    #[test]
    fn missing_dev_kvm_means_tcg() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            detect_accel(&dir.path().join("nope"), &dir.path().join("kvm_pvm")),
            Accel::Tcg
        );
    }
}
