//! The checks of stored pipelines.

use super::*;

fn fetch(url: &str, into: &str) -> Stage {
    Stage::Fetch(FetchStage {
        source: FetchSource::Url(url.into()),
        into: into.into(),
        max_bytes: None,
        idle_timeout_secs: None,
        timeout_secs: None,
    })
}

fn apt_fetch() -> Stage {
    Stage::Fetch(FetchStage {
        source: FetchSource::Apt(AptSource {
            package: "{package}".into(),
            follow_depends: None,
        }),
        into: "deb".into(),
        max_bytes: None,
        idle_timeout_secs: None,
        timeout_secs: None,
    })
}

fn checksum_file(artifact: &str, sums: &str) -> Stage {
    Stage::Checksum(ChecksumStage {
        artifact: artifact.into(),
        expected: Expected::File(ChecksumFile {
            artifact: sums.into(),
            entry: "{name}".into(),
        }),
    })
}

fn signature(artifact: &str, sig: &str) -> Stage {
    Stage::Signature(SignatureStage {
        artifact: artifact.into(),
        signature: sig.into(),
        keys: vec!["A".repeat(40)],
    })
}

fn install(artifact: &str) -> Stage {
    Stage::Install(InstallStage {
        artifact: artifact.into(),
        member: None,
        kind: "kernel".into(),
        name: "k".into(),
        version: "{version}".into(),
        executable: false,
    })
}

fn signed_pipeline() -> Vec<Stage> {
    vec![
        fetch("{base_url}/vmlinux", "file"),
        fetch("{base_url}/SHA256SUMS", "sums"),
        fetch("{base_url}/SHA256SUMS.asc", "sums_sig"),
        signature("sums", "sums_sig"),
        checksum_file("file", "sums"),
        install("file"),
    ]
}

fn check(settings: &ProviderSettings, stages: &[Stage]) -> Result<(), PipelineInvalid> {
    validate_pipeline(ProviderKind::Url, settings, stages)
}

#[test]
fn a_file_checked_against_a_signed_checksum_file_may_be_installed() {
    assert_eq!(
        check(&ProviderSettings::default(), &signed_pipeline()),
        Ok(())
    );
}

#[test]
fn a_checksum_against_an_unsigned_file_is_refused_unless_no_signature_is_declared() {
    let mut stages = signed_pipeline();
    stages.remove(3);

    let err = check(&ProviderSettings::default(), &stages).unwrap_err();

    assert_eq!(err.stage, Some(4));
    assert!(err.message.contains("no_signature"), "{err}");
}

#[test]
fn declaring_no_signature_lets_a_checksummed_file_be_installed() {
    let mut stages = signed_pipeline();
    stages.remove(3);
    let settings = ProviderSettings {
        no_signature: true,
        ..Default::default()
    };
    assert_eq!(check(&settings, &stages), Ok(()));
}

#[test]
fn an_unchecked_file_is_refused_even_without_signature() {
    let settings = ProviderSettings {
        no_signature: true,
        ..Default::default()
    };
    let err = check(&settings, &[fetch("{url}", "file"), install("file")]).unwrap_err();
    assert!(err.message.contains("no_checksum"), "{err}");
}

#[test]
fn a_stage_reading_an_artifact_not_yet_made_is_refused() {
    let err = check(&ProviderSettings::default(), &[install("file")]).unwrap_err();
    assert_eq!(err.stage, Some(0));
    assert!(err.message.contains("earlier stage"), "{err}");
}

#[test]
fn an_artifact_written_twice_is_refused() {
    let mut stages = signed_pipeline();
    stages.insert(1, fetch("{base_url}/other", "file"));
    let err = check(&ProviderSettings::default(), &stages).unwrap_err();
    assert!(err.message.contains("written twice"), "{err}");
}

#[test]
fn a_tree_is_read_through_a_member_and_a_file_never_is() {
    let extract = Stage::Extract(ExtractStage {
        artifact: "file".into(),
        member: None,
        format: ArchiveFormat::Tar,
        compression: Compression::Gz,
        into: "tree".into(),
        members: vec![],
        max_entries: None,
        max_bytes: None,
    });
    let mut stages = signed_pipeline();
    stages.pop();
    stages.push(extract);
    stages.push(install("tree"));

    let err = check(&ProviderSettings::default(), &stages).unwrap_err();

    assert!(err.message.contains("member"), "{err}");
}

#[test]
fn a_member_pattern_with_dotdot_is_refused() {
    let mut stages = signed_pipeline();
    stages.pop();
    stages.push(Stage::Extract(ExtractStage {
        artifact: "file".into(),
        member: None,
        format: ArchiveFormat::Tar,
        compression: Compression::Auto,
        into: "tree".into(),
        members: vec!["../etc/*".into()],
        max_entries: None,
        max_bytes: None,
    }));
    assert!(check(&ProviderSettings::default(), &stages).is_err());
}

#[test]
fn too_many_stages_are_refused() {
    let stages = vec![fetch("{url}", "a"); MAX_STAGES + 1];
    assert!(check(&ProviderSettings::default(), &stages).is_err());
}

#[test]
fn a_url_that_is_not_http_https_file_or_a_variable_is_refused() {
    let mut stages = signed_pipeline();
    stages[0] = fetch("ftp://host/x", "file");
    assert!(check(&ProviderSettings::default(), &stages).is_err());
}

#[test]
fn apt_sources_belong_to_debian_package_providers_only() {
    let apt = apt_fetch();
    let stages = vec![apt, install("deb")];
    let settings = ProviderSettings::default();
    assert!(check(&settings, &stages).is_err());
    assert_eq!(
        validate_pipeline(ProviderKind::DebianPackage, &settings, &stages),
        Ok(())
    );
}

#[test]
fn a_bad_fingerprint_is_refused() {
    let mut stages = signed_pipeline();
    stages[3] = Stage::Signature(SignatureStage {
        artifact: "sums".into(),
        signature: "sums_sig".into(),
        keys: vec!["not-hex".into()],
    });
    let err = check(&ProviderSettings::default(), &stages).unwrap_err();
    assert!(err.message.contains("fingerprint"), "{err}");
}

#[test]
fn zero_bounds_are_refused() {
    let mut stages = signed_pipeline();
    stages[0] = Stage::Fetch(FetchStage {
        source: FetchSource::Url("{url}".into()),
        into: "file".into(),
        max_bytes: Some(0),
        idle_timeout_secs: None,
        timeout_secs: None,
    });
    assert!(check(&ProviderSettings::default(), &stages).is_err());
}

#[test]
fn stages_parse_strictly() {
    let unknown_field = r#"{"stage":"fetch","source":{"url":"{url}"},"into":"a","extra":1}"#;
    let unknown_stage = r#"{"stage":"teleport","into":"a"}"#;
    assert!(serde_json::from_str::<Stage>(unknown_field).is_err());
    assert!(serde_json::from_str::<Stage>(unknown_stage).is_err());
    let ok = r#"{"stage":"fetch","source":{"url":"{url}"},"into":"a"}"#;
    assert!(serde_json::from_str::<Stage>(ok).is_ok());
}

#[test]
fn templates_render_known_variables_and_name_missing_ones() {
    let vars = BTreeMap::from([("version".to_string(), "1.2".to_string())]);
    assert_eq!(render("v{version}.tgz", &vars).unwrap(), "v1.2.tgz");
    assert!(render("{arch}", &vars).unwrap_err().contains("{arch}"));
    assert!(template_vars("{unclosed").is_err());
    assert!(template_vars("a}b").is_err());
    assert!(template_vars("{Bad}").is_err());
}

#[test]
fn variable_values_cannot_add_path_components_or_queries() {
    assert!(validate_var("version", "1.10.1").is_ok());
    assert!(validate_var("version", "1.0/../../x").is_err());
    assert!(validate_var("version", "1?a=b").is_err());
    assert!(validate_var("package", "..").is_err());
    assert!(validate_var("sha256", &"a".repeat(64)).is_ok());
    assert!(validate_var("sha256", "abc").is_err());
    assert!(validate_var("url", "http://127.0.0.1/x y").is_err());
}

#[test]
fn missing_vars_are_named_and_stage_made_ones_are_not() {
    let apt = apt_fetch();
    let mut inst = install("deb");
    if let Stage::Install(i) = &mut inst {
        i.name = "{apt_package}".into();
        i.version = "{apt_version}-{flavour}".into();
    }
    let vars = BTreeMap::from([("package".to_string(), "x1".to_string())]);
    assert_eq!(missing_vars(&[apt, inst], &vars), ["flavour"]);
}

#[test]
fn an_mmdebstrap_stage_belongs_to_a_debian_rootfs_provider_and_counts_as_signed() {
    let stages: Vec<Stage> = serde_json::from_value(serde_json::json!([
        {"stage": "mmdebstrap", "suite": "{suite}", "variant": "apt", "packages": "{packages}", "into": "rootfs"},
        {"stage": "install", "artifact": "rootfs", "kind": "rootfs", "name": "debian-{suite}", "version": "{rootfs_version}"}
    ]))
    .unwrap();
    let settings = ProviderSettings::default();
    assert_eq!(
        validate_pipeline(ProviderKind::DebianRootfs, &settings, &stages),
        Ok(())
    );
    assert!(validate_pipeline(ProviderKind::Url, &settings, &stages).is_err());
}

#[test]
fn debian_variables_follow_debians_rules() {
    assert!(validate_var("packages", "python3,git,ca-certificates").is_ok());
    assert!(validate_var("packages", "python3;rm").is_err());
    assert!(validate_var("suite", "bookworm").is_ok());
    assert!(validate_var("suite", "bookworm/updates").is_err());
    assert!(validate_var("variant", "custom").is_err());
}
