//! The providers shipped with nexusd, and the default pipeline of each provider kind (used when a
//! provider is added without stages). Written as the JSON they are stored as.

use nexus_lib::api::pipeline::Stage;
use nexus_lib::api::{Provider, ProviderKind, ProviderSettings};
use serde_json::json;

/// Where Firecracker publishes its releases (`asset_mirrors` replaces it).
pub const FIRECRACKER_RELEASES: &str =
    "https://github.com/firecracker-microvm/firecracker/releases/download";
/// The Firecracker release downloaded when no `version` is given.
pub const FIRECRACKER_VERSION: &str = "1.16.1";
/// The extra packages of the `debian-rootfs` provider's root filesystem.
pub const DEBIAN_ROOTFS_PACKAGES: &str = "python3,git,curl,ca-certificates";
/// Its mmdebstrap variant: the smallest that has apt and dpkg.
pub const DEBIAN_ROOTFS_VARIANT: &str = "apt";
/// Its suite when the host names none (no `VERSION_CODENAME` in os-release).
pub const DEBIAN_ROOTFS_SUITE: &str = "stable";

/// The asset name of the built guest kernel's ELF `vmlinux`, which QEMU boots when present.
pub const GUEST_KERNEL: &str = "nexus-guest";
/// The asset name of the built guest kernel's bzImage.
pub const GUEST_BZIMAGE: &str = "nexus-guest-bzimage";
/// The package the `debian-package` provider fetches when no `package` is given.
pub const DEBIAN_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

fn stages(value: serde_json::Value) -> Vec<Stage> {
    serde_json::from_value(value).expect("built-in pipelines are valid JSON stages")
}

/// The pipeline a provider of `kind` runs when it was added without one.
pub fn default_stages(kind: ProviderKind) -> Vec<Stage> {
    match kind {
        // A kernel image package: the meta package is followed to the versioned one, whose
        // `.deb` is kept (its modules feed the initramfs) and whose bzImage is the kernel.
        ProviderKind::DebianPackage => stages(json!([
            {"stage": "fetch", "source": {"apt": {"package": "{package}", "follow_depends": "linux-image-"}}, "into": "deb"},
            {"stage": "extract", "artifact": "deb", "format": "deb", "into": "tree", "members": ["boot/vmlinuz-*"]},
            {"stage": "install", "artifact": "deb", "kind": "package", "name": "{apt_package}", "version": "{apt_version}"},
            {"stage": "install", "artifact": "tree", "member": "boot/vmlinuz-*", "kind": "kernel", "name": "{apt_package}", "version": "{apt_version}"}
        ])),
        // The release tarball, checked against its published `.sha256.txt`; Firecracker
        // publishes no signature (the provider declares `no_signature`).
        ProviderKind::FirecrackerRelease => stages(json!([
            {"stage": "fetch", "source": {"url": "{base_url}/v{version}/firecracker-v{version}-{arch}.tgz"}, "into": "tarball"},
            {"stage": "fetch", "source": {"url": "{base_url}/v{version}/firecracker-v{version}-{arch}.tgz.sha256.txt"}, "into": "sums", "max_bytes": 65536},
            {"stage": "checksum", "artifact": "tarball", "expected": {"file": {"artifact": "sums", "entry": "firecracker-v{version}-{arch}.tgz"}}},
            {"stage": "extract", "artifact": "tarball", "format": "tar", "compression": "gz", "into": "release",
             "members": ["release-v{version}-{arch}/firecracker-v{version}-{arch}", "release-v{version}-{arch}/jailer-v{version}-{arch}"]},
            {"stage": "install", "artifact": "release", "member": "release-v{version}-{arch}/firecracker-v{version}-{arch}",
             "kind": "firecracker", "name": "firecracker", "version": "{version}", "executable": true},
            {"stage": "install", "artifact": "release", "member": "release-v{version}-{arch}/jailer-v{version}-{arch}",
             "kind": "jailer", "name": "jailer", "version": "{version}", "executable": true}
        ])),
        // Any file, checked against the sha256 the request pins.
        ProviderKind::Url => stages(json!([
            {"stage": "fetch", "source": {"url": "{url}"}, "into": "file"},
            {"stage": "checksum", "artifact": "file", "expected": {"sha256": "{sha256}"}},
            {"stage": "install", "artifact": "file", "kind": "{kind}", "name": "{name}", "version": "{version}"}
        ])),
        // The kernel source package through apt, built with the fragment nexusd carries; the
        // tree's `vmlinux` (QEMU through PVH, Firecracker) and `bzImage` are vouched for by the
        // build's SHA256SUMS, signed with nexusd's pinned build key.
        ProviderKind::KernelBuild => stages(json!([
            {"stage": "fetch", "source": {"apt": {"package": "{package}"}}, "into": "source"},
            {"stage": "kernel-build", "source": "source", "into": "build", "options": {"rebuild": "{rebuild}", "jobs": "{jobs}"}},
            {"stage": "install", "artifact": "build", "member": "vmlinux", "kind": "kernel", "name": GUEST_KERNEL, "version": "{kernel_version}"},
            {"stage": "install", "artifact": "build", "member": "bzImage", "kind": "kernel", "name": GUEST_BZIMAGE, "version": "{kernel_version}"}
        ])),
        // A Debian root filesystem from the host's apt configuration, as a tarball named after
        // its suite, versioned by its date and content.
        ProviderKind::DebianRootfs => stages(json!([
            {"stage": "mmdebstrap", "suite": "{suite}", "variant": "{variant}", "packages": "{packages}", "into": "rootfs"},
            {"stage": "install", "artifact": "rootfs", "kind": "rootfs", "name": "debian-{suite}", "version": "{rootfs_version}"}
        ])),
    }
}

/// The settings a provider of `kind` needs to run its default pipeline as shipped.
fn default_settings(kind: ProviderKind) -> ProviderSettings {
    let vars = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    match kind {
        ProviderKind::DebianPackage => ProviderSettings {
            vars: vars(&[("package", DEBIAN_KERNEL_PACKAGE)]),
            ..Default::default()
        },
        ProviderKind::FirecrackerRelease => ProviderSettings {
            base_url: Some(FIRECRACKER_RELEASES.into()),
            vars: vars(&[("version", FIRECRACKER_VERSION)]),
            no_signature: true,
            ..Default::default()
        },
        ProviderKind::Url => ProviderSettings {
            vars: vars(&[("kind", "file"), ("version", "1")]),
            no_signature: true,
            ..Default::default()
        },
        ProviderKind::DebianRootfs => {
            let suite = super::apt_sources::AptConfig::default().host_suite();
            ProviderSettings {
                vars: vars(&[
                    ("suite", suite.as_deref().unwrap_or(DEBIAN_ROOTFS_SUITE)),
                    ("variant", DEBIAN_ROOTFS_VARIANT),
                    ("packages", DEBIAN_ROOTFS_PACKAGES),
                ]),
                ..Default::default()
            }
        }
        ProviderKind::KernelBuild => ProviderSettings {
            vars: vars(&[
                ("package", super::kernel_build::DEFAULT_SOURCE_PACKAGE),
                ("rebuild", "false"),
                ("jobs", "auto"),
            ]),
            ..Default::default()
        },
    }
}

/// The built-in providers: one per kind, named after the kind.
pub fn providers() -> Vec<Provider> {
    [
        ProviderKind::DebianPackage,
        ProviderKind::FirecrackerRelease,
        ProviderKind::Url,
        ProviderKind::KernelBuild,
        ProviderKind::DebianRootfs,
    ]
    .into_iter()
    .map(|kind| Provider {
        name: kind.as_str().to_owned(),
        kind,
        builtin: true,
        settings: default_settings(kind),
        stages: default_stages(kind),
        created_at: String::new(),
    })
    .collect()
}

/// Whether `name` is reserved for a built-in provider.
pub fn is_builtin_name(name: &str) -> bool {
    ProviderKind::ALL.iter().any(|k| k.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_lib::api::pipeline::validate_pipeline;

    #[test]
    fn every_builtin_pipeline_passes_the_checks() {
        for p in providers() {
            assert_eq!(
                validate_pipeline(p.kind, &p.settings, &p.stages),
                Ok(()),
                "{}",
                p.name
            );
            assert_eq!(p.settings.validate(), Ok(()), "{}", p.name);
        }
    }

    #[test]
    fn every_kind_has_a_default_pipeline_that_passes_with_default_settings() {
        for kind in ProviderKind::ALL {
            let settings = default_settings(kind);
            assert_eq!(
                validate_pipeline(kind, &settings, &default_stages(kind)),
                Ok(()),
                "{kind}"
            );
        }
    }
}
