//! The guest kernel Nexus builds, for tests and benchmarks that boot it: built once from Debian's
//! `linux-source-6.1` with the repository's fragment and cached by its inputs under
//! `/var/cache/nexus/kernel-build` (`NEXUS_KERNEL_BUILD_DIR`), the source package kept in
//! `/var/cache/nexus/kernel-source` (`NEXUS_KERNEL_SOURCE_DIR`). A fresh machine builds it: about
//! 6 minutes on 2 cores. Builds of the same inputs in parallel test processes wait for each other.

use std::path::{Path, PathBuf};

use nexusd::assets::kernel_build::{
    BuiltKernel, DEFAULT_SOURCE_PACKAGE, KernelBuild, KernelSource, Progress,
    find_or_download_source,
};

/// The repository's kernel config fragment.
pub fn fragment() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel/nexus-guest.config")
}

fn dir_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The built kernel, from the cache or built now (progress on stderr).
pub fn built_kernel() -> BuiltKernel {
    build_kernel(false)
}

/// The built kernel; with `rebuild`, built again even when the cache has it.
pub fn build_kernel(rebuild: bool) -> BuiltKernel {
    let sources = dir_from_env("NEXUS_KERNEL_SOURCE_DIR", "/var/cache/nexus/kernel-source");
    let cache = dir_from_env("NEXUS_KERNEL_BUILD_DIR", "/var/cache/nexus/kernel-build");
    let deb = find_or_download_source(DEFAULT_SOURCE_PACKAGE, &sources).unwrap_or_else(|e| {
        panic!(
            "kernel source package: {}",
            nexus_lib::error::error_chain(&e)
        )
    });
    let build = KernelBuild::new(KernelSource::Package(deb), fragment(), cache).rebuild(rebuild);
    let mut last_report = 0;
    build
        .run(&mut |p| match p {
            Progress::Compiled(n) if n >= last_report + 250 => {
                last_report = n;
                eprintln!("kernel build: {n} objects");
            }
            Progress::Compiled(_) => {}
            other => eprintln!("kernel build: {other:?}"),
        })
        .unwrap_or_else(|e| panic!("kernel build: {}", nexus_lib::error::error_chain(&e)))
}
