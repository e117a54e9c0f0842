use super::*;
use crate::api::MAX_EGRESS_DOMAINS;

const HELLO: &str = r#"
name = "hello"
base = "default"            # an image name, a rootfs asset, or oci:PATH
[[files]]
src = "/srv/app/hello.txt"  # or: content = "inline text"
dest = "/opt/hello.txt"
mode = "0644"
[[run]]
command = "adduser -D app && chown app /opt/hello.txt"
"#;

fn parse(text: &str) -> Result<TemplateSpec, TemplateError> {
    TemplateSpec::parse(text)
}

fn key_of(text: &str) -> String {
    parse(text).unwrap_err().key
}

#[test]
fn the_readme_example_parses() {
    let t = parse(HELLO).unwrap();
    assert_eq!(t.name, "hello");
    assert_eq!(t.base_ref().unwrap(), BaseRef::Image("default".into()));
    assert_eq!(t.files[0].mode_bits().unwrap(), 0o644);
    assert_eq!(t.run.len(), 1);
}

#[test]
fn unknown_keys_are_refused() {
    let err = parse(&format!("{HELLO}\nextra = 1\n")).unwrap_err();
    assert!(err.message.contains("extra"), "{err}");
    let err = parse("name = \"a\"\nbase = \"default\"\n[[run]]\ncommand = \"x\"\ncmd = \"y\"\n")
        .unwrap_err();
    assert!(err.message.contains("cmd"), "{err}");
}

#[test]
fn bad_names_and_bases_are_refused() {
    assert_eq!(key_of("name = \"Hello\"\nbase = \"default\"\n"), "name");
    assert_eq!(key_of("name = \"a\"\nbase = \"Bad Base\"\n"), "base");
    assert_eq!(
        key_of("name = \"a\"\nbase = \"oci:relative/dir\"\n"),
        "base"
    );
    assert_eq!(key_of("name = \"a\"\nbase = \"oci:/a/../b\"\n"), "base");
    let t = parse("name = \"a\"\nbase = \"oci:/srv/img.tar\"\n").unwrap();
    assert_eq!(t.base_ref().unwrap(), BaseRef::Oci("/srv/img.tar".into()));
}

#[test]
fn file_paths_must_be_absolute_without_dotdot() {
    for dest in ["opt/x", "/opt/../etc/passwd", "/opt/", "/"] {
        let text = format!(
            "name = \"a\"\nbase = \"default\"\n[[files]]\ncontent = \"x\"\ndest = \"{dest}\"\n"
        );
        assert_eq!(key_of(&text), "files[0].dest", "{dest}");
    }
    let text = "name = \"a\"\nbase = \"default\"\n[[files]]\nsrc = \"rel\"\ndest = \"/x\"\n";
    assert_eq!(key_of(text), "files[0].src");
}

#[test]
fn a_file_needs_exactly_one_of_src_and_content() {
    let both = "name = \"a\"\nbase = \"default\"\n[[files]]\nsrc = \"/a\"\ncontent = \"x\"\ndest = \"/x\"\n";
    let none = "name = \"a\"\nbase = \"default\"\n[[files]]\ndest = \"/x\"\n";
    assert_eq!(key_of(both), "files[0].src");
    assert_eq!(key_of(none), "files[0].src");
}

#[test]
fn modes_must_be_octal() {
    for mode in ["0999", "rwx", "", "12345", "0o8"] {
        let text = format!(
            "name = \"a\"\nbase = \"default\"\n[[files]]\ncontent = \"x\"\ndest = \"/x\"\nmode = \"{mode}\"\n"
        );
        assert_eq!(key_of(&text), "files[0].mode", "{mode}");
    }
    let text = "name = \"a\"\nbase = \"default\"\n[[files]]\ncontent = \"x\"\ndest = \"/x\"\nmode = \"4755\"\n";
    assert_eq!(parse(text).unwrap().files[0].mode_bits().unwrap(), 0o4755);
}

#[test]
fn inline_content_is_capped() {
    let big = "x".repeat(MAX_INLINE_BYTES + 1);
    let text = format!(
        "name = \"a\"\nbase = \"default\"\n[[files]]\ncontent = \"{big}\"\ndest = \"/x\"\n"
    );
    assert_eq!(key_of(&text), "files[0].content");
    let chunk = "y".repeat(MAX_INLINE_BYTES);
    let mut text = "name = \"a\"\nbase = \"default\"\n".to_owned();
    for i in 0..3 {
        text += &format!("[[files]]\ncontent = \"{chunk}\"\ndest = \"/f{i}\"\n");
    }
    assert_eq!(key_of(&text), "files");
}

#[test]
fn oversized_text_is_refused_before_parsing() {
    let text = format!("# {}\n", "z".repeat(MAX_TEMPLATE_BYTES));
    assert_eq!(key_of(&text), "template");
}

#[test]
fn sizes_owners_env_and_timeouts_are_bounded() {
    let base = "name = \"a\"\nbase = \"default\"\n";
    assert_eq!(key_of(&format!("size = \"1K\"\n{base}")), "size");
    assert_eq!(key_of(&format!("size = \"1T\"\n{base}")), "size");
    assert_eq!(key_of(&format!("size = \"lots\"\n{base}")), "size");
    assert_eq!(
        parse(&format!("size = \"512M\"\n{base}"))
            .unwrap()
            .size_bytes()
            .unwrap(),
        Some(512 << 20)
    );
    assert_eq!(
        key_of(&format!(
            "{base}[[files]]\ncontent = \"x\"\ndest = \"/x\"\nowner = \"a b\"\n"
        )),
        "files[0].owner"
    );
    assert!(
        parse(&format!(
            "{base}[[files]]\ncontent = \"x\"\ndest = \"/x\"\nowner = \"app:1000\"\n"
        ))
        .is_ok()
    );
    assert_eq!(
        key_of(&format!(
            "{base}[[run]]\ncommand = \"true\"\nenv = {{ \"A=B\" = \"x\" }}\n"
        )),
        "run[0].env"
    );
    assert_eq!(
        key_of(&format!(
            "{base}[[run]]\ncommand = \"true\"\ntimeout_secs = 0\n"
        )),
        "run[0].timeout_secs"
    );
    assert_eq!(
        key_of(&format!("{base}[[run]]\ncommand = \"  \"\n")),
        "run[0].command"
    );
    assert_eq!(
        key_of(&format!(
            "{base}[[run]]\ncommand = \"true\"\nworkdir = \"tmp\"\n"
        )),
        "run[0].workdir"
    );
}

#[test]
fn ready_needs_exactly_one_check() {
    let base = "name = \"a\"\nbase = \"default\"\n";
    assert_eq!(
        key_of(&format!("{base}[ready]\ntimeout_secs = 5\n")),
        "ready"
    );
    assert_eq!(
        key_of(&format!("{base}[ready]\nport = 80\nfile = \"/x\"\n")),
        "ready"
    );
    assert_eq!(key_of(&format!("{base}[ready]\nport = 0\n")), "ready.port");
    assert_eq!(
        key_of(&format!("{base}[ready]\nport = 70000\n")),
        "template"
    );
    assert_eq!(
        key_of(&format!("{base}[ready]\nport = 80\ntimeout_secs = 601\n")),
        "ready.timeout_secs"
    );
    let t = parse(&format!(
        "{base}[start]\ncommand = \"httpd\"\n[ready]\nport = 8080\n"
    ))
    .unwrap();
    assert_eq!(t.ready.unwrap().port, Some(8080));
}

#[test]
fn the_canonical_form_ignores_comments_and_layout() {
    let a = parse(HELLO).unwrap();
    let b = parse(
        &HELLO
            .replace("# an image name, a rootfs asset, or oci:PATH", "")
            .replace("\n[[run]]", "\n\n\n[[run]]"),
    )
    .unwrap();
    assert_eq!(a.canonical(), b.canonical());
    let c = parse(&HELLO.replace("0644", "0600")).unwrap();
    assert_ne!(a.canonical(), c.canonical());
}

#[test]
fn a_step_network_is_an_egress_policy() {
    let text = |network: &str| {
        format!("name = \"a\"\nbase = \"default\"\n[[run]]\ncommand = \"x\"\nnetwork = {network}\n")
    };
    let t = parse(&text(r#"{ mode = "allow", domains = ["deb.debian.org", "*.pypi.org"], cidrs = ["10.1.0.0/16"] }"#)).unwrap();
    assert!(t.needs_network());
    assert_eq!(
        t.run[0].egress().summary(),
        "allow 10.1.0.0/16,deb.debian.org,*.pypi.org"
    );
    let t = parse(&text(r#"{ mode = "allow-all" }"#)).unwrap();
    assert_eq!(t.run[0].egress(), EgressPolicy::AllowAll);
    // Absent: no network, and a step without one runs under deny-all.
    let t = parse(HELLO).unwrap();
    assert!(!t.needs_network());
    assert_eq!(t.run[0].egress(), EgressPolicy::DenyAll);
    // The policy is part of the canonical text, so of the cache key.
    let a = parse(&text(r#"{ mode = "allow-all" }"#))
        .unwrap()
        .canonical();
    let b = parse(&text(r#"{ mode = "deny-all" }"#))
        .unwrap()
        .canonical();
    assert_ne!(a, b);
    for bad in [
        r#"{ mode = "open" }"#,
        r#"{ mode = "allow", domains = ["bad domain"] }"#,
        r#"{ mode = "allow", cidrs = ["10.0.0.1/8"] }"#,
        r#"{ mode = "allow-all", domains = ["x.org"] }"#,
        r#""allow-all""#,
    ] {
        assert!(parse(&text(bad)).is_err(), "{bad}");
    }
    let many: Vec<String> = (0..=MAX_EGRESS_DOMAINS)
        .map(|i| format!("\"d{i}.org\""))
        .collect();
    let err = parse(&text(&format!(
        "{{ mode = \"allow\", domains = [{}] }}",
        many.join(",")
    )))
    .unwrap_err();
    assert_eq!(err.key, "run[0].network", "{err}");
}
