//! The checks every stored pipeline passes: bounds, templates, the flow of artifacts from stage
//! to stage, each provider kind's rules, and that every installed file is verified as strongly
//! as its provider promises.

use std::collections::HashMap;

use super::{
    AssetKind, Compression, Expected, FetchSource, MAX_LIST, MAX_STAGE_BYTES, MAX_STAGE_SECS,
    MAX_STAGES, ProviderKind, ProviderSettings, Stage, Trust, required_trust, template_vars,
    valid_artifact_name, valid_fingerprint, validate_var,
};

/// A stored pipeline that fails the checks: which stage and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", .stage.map(|i| format!("stage {i}: ")).unwrap_or_default())]
pub struct PipelineInvalid {
    /// Index of the stage at fault (0-based), when one is.
    pub stage: Option<usize>,
    pub message: String,
}

fn invalid(stage: Option<usize>, message: impl Into<String>) -> PipelineInvalid {
    PipelineInvalid {
        stage,
        message: message.into(),
    }
}

/// Checks a member pattern: a relative path of the tree, `*`, `?` and `[...]` allowed.
fn check_member(pattern: &str) -> Result<(), String> {
    template_vars(pattern)?;
    if pattern.is_empty() || pattern.len() > 1024 {
        return Err("a member pattern has 1 to 1024 bytes".into());
    }
    if pattern.starts_with('/') || pattern.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(format!(
            "member {pattern:?} must be a relative path without '..' or empty components"
        ));
    }
    Ok(())
}

/// What the checker knows of an artifact.
#[derive(Debug, Clone, Copy)]
struct Known {
    tree: bool,
    trust: Trust,
}

/// The options a `kernel-build` stage takes.
pub const KERNEL_BUILD_OPTIONS: &[&str] = &["jobs", "rebuild"];

/// Checks a provider's pipeline: bounds, templates, artifact flow, the kind's rules, and that
/// every installed file is verified as the provider's declarations require.
pub fn validate_pipeline(
    kind: ProviderKind,
    settings: &ProviderSettings,
    stages: &[Stage],
) -> Result<(), PipelineInvalid> {
    if stages.is_empty() || stages.len() > MAX_STAGES {
        return Err(invalid(None, format!("1 to {MAX_STAGES} stages")));
    }
    let need = required_trust(settings);
    let mut known: HashMap<&str, Known> = HashMap::new();
    let mut installs = 0;
    for (i, stage) in stages.iter().enumerate() {
        let at = Some(i);
        let fail = |m: String| invalid(at, m);
        let input = |name: &str, member: &Option<String>| -> Result<Known, PipelineInvalid> {
            let k = *known.get(name).ok_or_else(|| {
                invalid(
                    at,
                    format!("artifact {name:?} is not made by an earlier stage"),
                )
            })?;
            match (k.tree, member) {
                (true, None) => Err(invalid(at, format!("{name:?} is a tree: name a `member`"))),
                (false, Some(_)) => Err(invalid(
                    at,
                    format!("{name:?} is a file: it has no `member`"),
                )),
                (_, Some(m)) => check_member(m).map(|()| k).map_err(|e| invalid(at, e)),
                (_, None) => Ok(k),
            }
        };
        let bytes = |b: Option<u64>| match b {
            Some(0) => Err(invalid(at, "a byte bound must be at least 1")),
            Some(b) if b > MAX_STAGE_BYTES => Err(invalid(
                at,
                format!("a byte bound is at most {MAX_STAGE_BYTES}"),
            )),
            _ => Ok(()),
        };
        let secs = |s: Option<u64>| match s {
            Some(s) if s == 0 || s > MAX_STAGE_SECS => Err(invalid(
                at,
                format!("a time bound is 1 to {MAX_STAGE_SECS} seconds"),
            )),
            _ => Ok(()),
        };
        let (output, made) = match stage {
            Stage::Fetch(f) => {
                bytes(f.max_bytes)?;
                secs(f.idle_timeout_secs)?;
                secs(f.timeout_secs)?;
                let trust = match &f.source {
                    FetchSource::Url(url) => {
                        template_vars(url).map_err(fail)?;
                        if kind == ProviderKind::DebianPackage {
                            return Err(invalid(
                                at,
                                "a debian-package provider fetches with apt only",
                            ));
                        }
                        let scheme_ok = ["{base_url}", "{url}", "http://", "https://", "file://"]
                            .iter()
                            .any(|p| url.starts_with(p));
                        if !scheme_ok {
                            return Err(invalid(
                                at,
                                format!(
                                    "{url:?} must start with http://, https://, file://, {{base_url}} or {{url}}"
                                ),
                            ));
                        }
                        Trust::None
                    }
                    FetchSource::Apt(apt) => {
                        template_vars(&apt.package).map_err(fail)?;
                        if let Some(prefix) = &apt.follow_depends {
                            template_vars(prefix).map_err(fail)?;
                        }
                        if !matches!(
                            kind,
                            ProviderKind::DebianPackage | ProviderKind::KernelBuild
                        ) {
                            return Err(invalid(
                                at,
                                "only debian-package and kernel-build providers fetch with apt",
                            ));
                        }
                        Trust::Signed
                    }
                };
                (&f.into, Known { tree: false, trust })
            }
            Stage::Checksum(c) => {
                input(&c.artifact, &None)?;
                let vouched = match &c.expected {
                    Expected::Sha256(v) => {
                        let vars = template_vars(v).map_err(fail)?;
                        if vars.is_empty() && validate_var("sha256", v).is_err() {
                            return Err(invalid(at, format!("{v:?} is not 64 hex digits")));
                        }
                        Trust::Checksummed
                    }
                    Expected::File(file) => {
                        template_vars(&file.entry).map_err(fail)?;
                        let sums = input(&file.artifact, &None)?;
                        if sums.trust == Trust::Signed {
                            Trust::Signed
                        } else {
                            Trust::Checksummed
                        }
                    }
                };
                let entry = known
                    .get_mut(c.artifact.as_str())
                    .expect("checked by input()");
                entry.trust = entry.trust.max(vouched);
                continue;
            }
            Stage::Signature(s) => {
                input(&s.artifact, &None)?;
                input(&s.signature, &None)?;
                if s.keys.is_empty() || s.keys.len() > MAX_LIST {
                    return Err(invalid(at, format!("1 to {MAX_LIST} keys")));
                }
                if let Some(bad) = s.keys.iter().find(|k| !valid_fingerprint(k)) {
                    return Err(invalid(
                        at,
                        format!("{bad:?} is not a fingerprint (40 or 64 hex digits)"),
                    ));
                }
                if settings.no_signature {
                    return Err(invalid(
                        at,
                        "the provider declares `no_signature` but has a signature stage",
                    ));
                }
                known.get_mut(s.artifact.as_str()).expect("checked").trust = Trust::Signed;
                continue;
            }
            Stage::Decompress(d) => {
                bytes(d.max_bytes)?;
                let k = input(&d.artifact, &d.member)?;
                if d.format == Compression::None {
                    return Err(invalid(at, "decompress needs a format other than `none`"));
                }
                (
                    &d.into,
                    Known {
                        tree: false,
                        trust: k.trust,
                    },
                )
            }
            Stage::Extract(x) => {
                bytes(x.max_bytes)?;
                if x.max_entries == Some(0) {
                    return Err(invalid(at, "max_entries must be at least 1"));
                }
                let k = input(&x.artifact, &x.member)?;
                if x.members.len() > MAX_LIST {
                    return Err(invalid(at, format!("at most {MAX_LIST} members")));
                }
                for m in &x.members {
                    check_member(m).map_err(fail)?;
                }
                (
                    &x.into,
                    Known {
                        tree: true,
                        trust: k.trust,
                    },
                )
            }
            Stage::Convert(c) => {
                bytes(c.max_bytes)?;
                let k = input(&c.artifact, &c.member)?;
                (
                    &c.into,
                    Known {
                        tree: false,
                        trust: k.trust,
                    },
                )
            }
            Stage::Install(inst) => {
                let k = input(&inst.artifact, &inst.member)?;
                let kind_vars = template_vars(&inst.kind).map_err(fail)?;
                if kind_vars.is_empty() && inst.kind.parse::<AssetKind>().is_err() {
                    return Err(invalid(at, format!("{:?} is not an asset kind", inst.kind)));
                }
                template_vars(&inst.name).map_err(fail)?;
                template_vars(&inst.version).map_err(fail)?;
                if k.trust < need {
                    return Err(invalid(at, missing_verification(&inst.artifact, need)));
                }
                installs += 1;
                continue;
            }
            Stage::KernelBuild(b) => {
                if kind != ProviderKind::KernelBuild {
                    return Err(invalid(
                        at,
                        "only a kernel-build provider has a kernel-build stage",
                    ));
                }
                let source = input(&b.source, &None)?;
                if source.trust != Trust::Signed {
                    return Err(invalid(
                        at,
                        format!(
                            "the kernel source {:?} must be verified (fetched with apt, or signed) before it is built",
                            b.source
                        ),
                    ));
                }
                for (key, value) in &b.options {
                    if !KERNEL_BUILD_OPTIONS.contains(&key.as_str()) {
                        return Err(invalid(
                            at,
                            format!(
                                "option {key:?} is not one of {}",
                                KERNEL_BUILD_OPTIONS.join(", ")
                            ),
                        ));
                    }
                    template_vars(value).map_err(fail)?;
                }
                // The build signs its own SHA256SUMS with a key nexusd generated and pinned.
                (
                    &b.into,
                    Known {
                        tree: true,
                        trust: Trust::Signed,
                    },
                )
            }
            Stage::Mmdebstrap(m) => {
                secs(m.timeout_secs)?;
                let trust = m.check(kind).map_err(fail)?;
                (&m.into, Known { tree: false, trust })
            }
        };
        if !valid_artifact_name(output) {
            return Err(invalid(
                at,
                format!("{output:?} is not an artifact name ([a-z][a-z0-9_]{{0,31}})"),
            ));
        }
        if known.insert(output, made).is_some() {
            return Err(invalid(at, format!("artifact {output:?} is written twice")));
        }
    }
    if installs == 0 {
        return Err(invalid(None, "a pipeline installs at least one file"));
    }
    Ok(())
}

fn missing_verification(artifact: &str, need: Trust) -> String {
    match need {
        Trust::Signed => format!(
            "{artifact:?} is installed without a signature check: add a signature stage (over it or over the checksum file it was checked against), or declare `no_signature` in the provider's settings"
        ),
        _ => format!(
            "{artifact:?} is installed without a checksum: add a checksum stage, or declare `no_checksum` in the provider's settings"
        ),
    }
}
