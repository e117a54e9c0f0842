//! The build's logic around `make`: cache hits, verification, signing, the errors that name what
//! is missing. Nothing here compiles a kernel (tests/kernel_build.rs does).

use super::*;

/// A build directory prepared by hand for the inputs of `build`, as a finished build leaves it.
fn fake_build(build: &KernelBuild, tarball: &Path) -> (PathBuf, BuildRecord) {
    let inputs = build.inputs(tarball, None).unwrap();
    let dir = build.out_root.join(inputs.key());
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(VMLINUX), b"vmlinux bytes").unwrap();
    fs::write(dir.join(BZIMAGE), b"bzImage bytes").unwrap();
    let record = BuildRecord {
        key: inputs.key(),
        inputs,
        kernel_release: "6.1.192-nexus".into(),
        build_secs: 300.0,
        built_at: 1,
    };
    write_outputs(&dir, &record).unwrap();
    (dir, record)
}

struct Fixture {
    _tmp: tempfile::TempDir,
    tarball: PathBuf,
    build: KernelBuild,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let tarball = tmp.path().join("linux-source-6.1.tar.xz");
    fs::write(&tarball, b"not really a kernel").unwrap();
    let fragment = tmp.path().join("guest.config");
    fs::write(&fragment, "CONFIG_64BIT=y\n# CONFIG_MODULES is not set\n").unwrap();
    let build = KernelBuild::new(
        KernelSource::Tarball(tarball.clone()),
        fragment,
        tmp.path().join("out"),
    );
    Fixture {
        _tmp: tmp,
        tarball,
        build,
    }
}

struct Signer;

impl SumsSigner for Signer {
    fn signature_name(&self) -> &str {
        "SHA256SUMS.sig"
    }

    fn sign(&self, sums: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok([b"signed:".as_slice(), sums].concat())
    }
}

#[test]
fn outputs_of_the_same_inputs_are_a_cache_hit() {
    let f = fixture();
    let (dir, record) = fake_build(&f.build, &f.tarball);
    let mut events = Vec::new();

    let built = f.build.run(&mut |p| events.push(p)).unwrap();

    assert!(built.cached);
    assert_eq!(built.dir, dir);
    assert_eq!(built.record, record);
    assert_eq!(events, [Progress::Stage(Stage::Inputs), Progress::CacheHit]);
}

#[test]
fn a_cache_hit_leaves_no_scratch_directory() {
    let f = fixture();
    let (dir, _) = fake_build(&f.build, &f.tarball);

    f.build.run(&mut |_| {}).unwrap();

    let names: Vec<String> = fs::read_dir(&f.build.out_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(names, [dir.file_name().unwrap().to_string_lossy()]);
}

#[test]
fn a_cached_build_without_its_signature_is_signed() {
    let f = fixture();
    let (dir, _) = fake_build(&f.build, &f.tarball);
    let build = f.build.signer(Box::new(Signer));

    build.run(&mut |_| {}).unwrap();

    let sums = fs::read(dir.join(SUMS)).unwrap();
    let signature = fs::read(dir.join("SHA256SUMS.sig")).unwrap();
    assert_eq!(signature, [b"signed:".as_slice(), &sums].concat());
}

#[test]
fn sign_sums_signs_the_exact_bytes_of_the_sums() {
    let f = fixture();
    let (dir, _) = fake_build(&f.build, &f.tarball);

    let path = sign_sums(&dir, &Signer).unwrap();

    let sums = fs::read(dir.join(SUMS)).unwrap();
    assert_eq!(
        fs::read(path).unwrap(),
        [b"signed:".as_slice(), &sums].concat()
    );
}

#[test]
fn a_tampered_vmlinux_does_not_verify() {
    let f = fixture();
    let (dir, _) = fake_build(&f.build, &f.tarball);
    fs::write(dir.join(VMLINUX), b"something else").unwrap();

    let err = verify_build(&dir).unwrap_err();

    assert!(
        err.to_string()
            .contains("vmlinux does not match its checksum"),
        "{err}"
    );
}

#[test]
fn a_build_directory_without_a_record_does_not_verify() {
    let f = fixture();
    let (dir, _) = fake_build(&f.build, &f.tarball);
    fs::remove_file(dir.join(RECORD)).unwrap();

    let err = verify_build(&dir).unwrap_err();

    assert!(err.to_string().contains("inputs.json"), "{err}");
}

#[test]
fn a_changed_fragment_changes_the_key() {
    let f = fixture();
    let before = f.build.inputs(&f.tarball, None).unwrap().key();
    fs::write(&f.build.fragment, "CONFIG_64BIT=y\n").unwrap();

    let after = f.build.inputs(&f.tarball, None).unwrap().key();

    assert_ne!(before, after);
}

#[test]
fn inputs_record_the_compiler_and_the_hashes() {
    let f = fixture();

    let inputs = f.build.inputs(&f.tarball, None).unwrap();

    assert!(inputs.compiler.starts_with("gcc"), "{}", inputs.compiler);
    assert!(inputs.linker.contains("ld"), "{}", inputs.linker);
    assert_eq!(
        inputs.source_sha256,
        record::sha256_reader(&b"not really a kernel"[..]).unwrap()
    );
    assert_eq!(inputs.source_tarball, "linux-source-6.1.tar.xz");
}

#[test]
fn a_malformed_fragment_is_refused_naming_the_file_and_line() {
    let f = fixture();
    fs::write(&f.build.fragment, "CONFIG_64BIT=y\nvirtio please\n").unwrap();

    let err = f.build.run(&mut |_| {}).unwrap_err();

    let text = err.to_string();
    assert!(
        text.contains("guest.config") && text.contains("line 2"),
        "{text}"
    );
}

#[test]
fn a_missing_tarball_is_named() {
    let f = fixture();
    fs::remove_file(&f.tarball).unwrap();

    let err = f.build.run(&mut |_| {}).unwrap_err();

    assert!(err.to_string().contains("linux-source-6.1.tar.xz"), "{err}");
}

#[test]
fn a_fragment_option_lost_by_olddefconfig_is_named() {
    let f = fixture();
    let config = f._tmp.path().join(".config");
    fs::write(&config, "CONFIG_64BIT=y\nCONFIG_MODULES=y\n").unwrap();

    let err = f.build.check_fragment(&config).unwrap_err();

    assert!(
        err.to_string()
            .contains("# CONFIG_MODULES is not set (the build has CONFIG_MODULES=y)"),
        "{err}"
    );
}

#[test]
fn a_failing_step_quotes_the_end_of_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = BoundedLog::create(&dir.path().join("build.log"), LOG_LIMIT).unwrap();
    let mut step = Step {
        log: &mut log,
        nice: 19,
        stamp: "2025-01-01T00:00:00Z",
        cancel: &tokio_util::sync::CancellationToken::new(),
    };
    let mut cmd = step.command("sh");
    cmd.args(["-c", "echo 'vmlinux.o: undefined reference'; exit 2"]);

    let err = step.run(cmd, &mut |_| {}).unwrap_err();

    let text = err.to_string();
    assert!(text.contains("exit status: 2"), "{text}");
    assert!(text.contains("undefined reference"), "{text}");
}

#[test]
fn the_build_environment_holds_only_path_locale_and_kbuild_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = BoundedLog::create(&dir.path().join("build.log"), LOG_LIMIT).unwrap();
    let step = Step {
        log: &mut log,
        nice: 19,
        stamp: "2025-01-01T00:00:00Z",
        cancel: &tokio_util::sync::CancellationToken::new(),
    };

    let cmd = step.command("env");

    let mut names: Vec<String> = cmd
        .get_envs()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "KBUILD_BUILD_HOST",
            "KBUILD_BUILD_TIMESTAMP",
            "KBUILD_BUILD_USER",
            "KBUILD_BUILD_VERSION",
            "LC_ALL",
            "PATH"
        ]
    );
}

#[test]
fn kbuild_quiet_lines_count_as_steps() {
    assert!(is_kbuild_step("  CC      kernel/fork.o"));
    assert!(is_kbuild_step("  LD      vmlinux"));
    assert!(!is_kbuild_step("make[1]: Entering directory"));
    assert!(!is_kbuild_step("  Kernel: arch/x86/boot/bzImage is ready"));
}

#[test]
fn the_newest_source_package_is_found() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "linux-source-6.1_6.1.190-1_all.deb",
        "linux-source-6.1_6.1.192-2_all.deb",
        "linux-source-6.10_6.10.1-1_all.deb",
    ] {
        fs::write(dir.path().join(name), b"").unwrap();
    }

    let found = find_or_download_source("linux-source-6.1", dir.path()).unwrap();

    assert!(
        found.ends_with("linux-source-6.1_6.1.192-2_all.deb"),
        "{found:?}"
    );
}

#[test]
fn a_cancelled_step_kills_its_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = BoundedLog::create(&dir.path().join("build.log"), LOG_LIMIT).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut step = Step {
        log: &mut log,
        nice: 19,
        stamp: "2025-01-01T00:00:00Z",
        cancel: &cancel,
    };
    let pid_file = dir.path().join("grandchild");
    let mut cmd = step.command("sh");
    // A grandchild that would keep the output pipe open for a minute if it survived.
    cmd.arg("-c")
        .arg(format!("sleep 60 & echo $! > {}; wait", pid_file.display()));
    let firing = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        firing.cancel();
    });

    let started = std::time::Instant::now();
    let err = step.run(cmd, &mut |_| {}).unwrap_err();

    assert!(matches!(err, KernelBuildError::Cancelled), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    // Killed, it is a zombie until init reaps it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while rustix::process::test_kill_process(pid).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the grandchild {pid:?} survived the cancel"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
