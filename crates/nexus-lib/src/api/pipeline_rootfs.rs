//! The `mmdebstrap` stage of the `debian-rootfs` provider kind: a Debian root filesystem built
//! from the host's own apt configuration, as a tarball artifact. And the rules of its inputs
//! (Debian suite and package names, variants), shared by the daemon's checks and by
//! [`super::validate_var`] for the variables `suite`, `variant` and `packages`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ProviderKind, Trust, template_vars};

/// Most extra packages of one build.
pub const MAX_PACKAGES: usize = 64;
/// Longest suite name.
pub const MAX_SUITE_LEN: usize = 32;

/// The mmdebstrap variants a rootfs may be built with: all that install a system with dpkg.
/// `apt` (Essential: yes packages plus apt) is the smallest with apt and dpkg, and the default.
pub const VARIANTS: [&str; 8] = [
    "essential",
    "apt",
    "minbase",
    "buildd",
    "required",
    "important",
    "debootstrap",
    "standard",
];

/// Builds a Debian root filesystem with `mmdebstrap` from the host's apt sources (or the
/// provider's `{base_url}` mirror) into a tarball artifact (zstd-compressed tar). apt checks the
/// archive's signatures with the host's keyring, so the tarball counts as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MmdebstrapStage {
    /// Suite template, e.g. `{suite}` (`bookworm`, `trixie`, `stable`).
    pub suite: String,
    /// Variant template, e.g. `{variant}`: one of `essential`, `apt`, `minbase`, `buildd`,
    /// `required`, `important`, `debootstrap`, `standard`.
    pub variant: String,
    /// Extra packages template, comma-separated Debian package names, e.g. `{packages}`.
    pub packages: String,
    /// The tarball artifact written.
    pub into: String,
    /// Give up (killing mmdebstrap and everything it started) after this long (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl MmdebstrapStage {
    pub fn templates(&self) -> Vec<&str> {
        vec![
            self.suite.as_str(),
            self.variant.as_str(),
            self.packages.as_str(),
        ]
    }

    /// The stage's own rules in a pipeline of a `kind` provider; the trust of its tarball.
    pub(super) fn check(&self, kind: ProviderKind) -> Result<Trust, String> {
        if kind != ProviderKind::DebianRootfs {
            return Err("only a debian-rootfs provider has an mmdebstrap stage".into());
        }
        for t in self.templates() {
            template_vars(t)?;
        }
        // apt checks the archive's signed Release files with the host's keyrings.
        Ok(Trust::Signed)
    }
}

/// Debian policy for package names: `[a-z0-9][a-z0-9+.-]+`, here at most 128 bytes.
pub fn valid_debian_package(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
}

/// A suite or codename: `[a-z][a-z0-9-]{0,31}` (`bookworm`, `bookworm-backports`, `sid`).
pub fn check_suite(suite: &str) -> Result<(), String> {
    let ok = suite.len() <= MAX_SUITE_LEN
        && suite.starts_with(|c: char| c.is_ascii_lowercase())
        && !suite.ends_with('-')
        && suite
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "suite {suite:?} is not a Debian suite name ([a-z][a-z0-9-], at most {MAX_SUITE_LEN} bytes)"
        ))
    }
}

/// One of [`VARIANTS`].
pub fn check_variant(variant: &str) -> Result<(), String> {
    if VARIANTS.contains(&variant) {
        Ok(())
    } else {
        Err(format!(
            "variant {variant:?} is not one of {}",
            VARIANTS.join(", ")
        ))
    }
}

/// A comma-separated list of 1 to [`MAX_PACKAGES`] Debian package names; the names, in order.
pub fn parse_packages(list: &str) -> Result<Vec<&str>, String> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if names.len() > MAX_PACKAGES {
        return Err(format!(
            "packages: at most {MAX_PACKAGES} names (got {})",
            names.len()
        ));
    }
    if let Some(bad) = names.iter().find(|n| !valid_debian_package(n)) {
        return Err(format!(
            "packages: {bad:?} is not a Debian package name ([a-z0-9][a-z0-9+.-]+, 2 to 128 bytes)"
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lists_follow_debian_policy_and_are_bounded() {
        assert_eq!(
            parse_packages("python3,git,g++").unwrap(),
            ["python3", "git", "g++"]
        );
        assert!(parse_packages("python3,Bad").is_err());
        assert!(parse_packages("python3,,git").is_err());
        assert!(parse_packages("-o,git").is_err());
        assert!(parse_packages(&vec!["ab"; MAX_PACKAGES + 1].join(",")).is_err());
    }

    #[test]
    fn suites_and_variants_are_checked() {
        assert!(check_suite("bookworm-backports").is_ok());
        assert!(check_suite("../x").is_err());
        assert!(check_suite("Bookworm").is_err());
        assert!(check_suite(&"a".repeat(33)).is_err());
        assert!(check_variant("apt").is_ok());
        assert!(check_variant("extract").is_err());
    }
}
