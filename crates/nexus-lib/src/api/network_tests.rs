use super::*;

#[test]
fn publish_parses_the_cli_forms() {
    let p: Publish = "8080:80".parse().unwrap();
    assert_eq!(p.to_string(), "127.0.0.1:8080:80/tcp");
    let p: Publish = "0.0.0.0:5353:53/udp".parse().unwrap();
    assert_eq!((p.bind, p.protocol), (Ipv4Addr::UNSPECIFIED, Protocol::Udp));
    for bad in [
        "80",
        "0:80",
        "1:2:3:4",
        "8080:80/sctp",
        "x:1:2",
        "70000:1",
        "224.0.0.1:1:2",
    ] {
        assert!(bad.parse::<Publish>().is_err(), "{bad}");
    }
}

#[test]
fn cidrs_refuse_host_bits_and_bad_prefixes() {
    assert_eq!(
        "10.0.0.0/8".parse::<Ipv4Cidr>().unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!("1.2.3.4".parse::<Ipv4Cidr>().unwrap().prefix(), 32);
    assert!(
        "10.0.0.1/8"
            .parse::<Ipv4Cidr>()
            .unwrap_err()
            .contains("host bits")
    );
    assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
    assert!("10.0.0/8".parse::<Ipv4Cidr>().is_err());
    let net: Ipv4Cidr = "10.1.0.0/16".parse().unwrap();
    assert!(net.contains(Ipv4Addr::new(10, 1, 255, 3)));
    assert!(!net.contains(Ipv4Addr::new(10, 2, 0, 1)));
    assert_eq!(net.last(), Ipv4Addr::new(10, 1, 255, 255));
    assert!(net.overlaps(&"10.0.0.0/8".parse().unwrap()));
    assert!(!net.overlaps(&"10.2.0.0/16".parse().unwrap()));
}

#[test]
fn domain_patterns_match_names_and_subdomains() {
    let exact: DomainPattern = "Allowed.Test.".parse().unwrap();
    assert!(exact.matches("allowed.test") && exact.matches("ALLOWED.test."));
    assert!(!exact.matches("a.allowed.test"));
    let wild: DomainPattern = "*.example.com".parse().unwrap();
    assert!(wild.matches("a.example.com") && wild.matches("a.b.example.com"));
    assert!(!wild.matches("example.com") && !wild.matches("badexample.com"));
    for bad in [
        "",
        "a..b",
        "-a.b",
        "a b",
        "*",
        "*.",
        "1.2.3.4",
        "a.*.b",
        &"a".repeat(64),
    ] {
        assert!(bad.parse::<DomainPattern>().is_err(), "{bad:?}");
    }
}

/// The schema's pattern and length bound accept exactly what the validation accepts: every
/// string of up to 5 characters over an alphabet of the interesting ones, and long names.
#[test]
fn domain_schema_pattern_agrees_with_the_validation() {
    let re = regex_automata::meta::Regex::new(DOMAIN_PATTERN).unwrap();
    let schema_ok = |s: &str| s.len() <= MAX_DOMAIN_LEN && re.is_match(s);
    let alphabet = ['a', 'Z', '1', '-', '_', '.', '*', ' '];
    let mut all = vec![String::new()];
    let mut layer = vec![String::new()];
    for _ in 0..5 {
        layer = layer
            .iter()
            .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
            .collect();
        all.extend(layer.iter().cloned());
    }
    let label = |c: char, n: usize| c.to_string().repeat(n);
    let long = [
        format!("{}.test", label('a', 63)),
        format!("{}.test", label('a', 64)),
        format!(
            "{}.{}.{}.{}",
            label('a', 63),
            label('b', 63),
            label('c', 63),
            label('d', 61)
        ),
        format!(
            "{}.{}.{}.{}.",
            label('a', 63),
            label('b', 63),
            label('c', 63),
            label('d', 60)
        ),
        format!(
            "{}.{}.{}.{}",
            label('a', 63),
            label('b', 63),
            label('c', 63),
            label('d', 62)
        ),
        format!(
            "*.{}.{}.{}.{}",
            label('a', 63),
            label('b', 63),
            label('c', 63),
            label('d', 59)
        ),
        "1.2.3.4".into(),
        "a.b1".into(),
    ];
    all.extend(long);
    for s in &all {
        assert_eq!(
            schema_ok(s),
            s.parse::<DomainPattern>().is_ok(),
            "schema and validation disagree on {s:?}"
        );
    }
}

/// The schema's pattern accepts exactly what the validation accepts: every prefix length
/// over addresses with and without host bits, and malformed forms.
#[test]
fn cidr_schema_pattern_agrees_with_the_validation() {
    let re = regex_automata::meta::Regex::new(&cidr_pattern()).unwrap();
    let mut all: Vec<String> = [
        "",
        "1.2.3",
        "1.2.3.4/",
        "1.2.3.4/33",
        "1.2.3.4/032",
        "1.2.3.4/+8",
    ]
    .into_iter()
    .chain([
        "01.2.3.4",
        "256.1.1.1",
        "1.2.3.4/8/8",
        " 1.2.3.4",
        "0.0.0.0/0",
    ])
    .map(String::from)
    .collect();
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let addr = Ipv4Addr::from(x);
        all.push(addr.to_string());
        for prefix in 0..=32u32 {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            all.push(format!("{addr}/{prefix}"));
            all.push(format!("{}/{prefix}", Ipv4Addr::from(x & mask)));
        }
    }
    for s in &all {
        assert_eq!(
            re.is_match(s),
            s.parse::<Ipv4Cidr>().is_ok(),
            "schema and validation disagree on {s:?}"
        );
    }
}

#[test]
fn egress_policy_json_is_tagged_by_mode() {
    let p: EgressPolicy = serde_json::from_str(
        r#"{"mode":"allow","cidrs":["10.0.0.0/8","10.0.0.0/8"],"domains":["*.a.test"]}"#,
    )
    .unwrap();
    let p = p.normalized().unwrap();
    assert_eq!(p.summary(), "allow 10.0.0.0/8,*.a.test");
    assert!(p.allows_name("x.a.test") && !p.allows_name("a.test"));
    let deny: EgressPolicy = serde_json::from_str(r#"{"mode":"deny-all"}"#).unwrap();
    assert_eq!(deny, EgressPolicy::DenyAll);
    assert!(
        serde_json::from_str::<EgressPolicy>(r#"{"mode":"allow","cidrs":["1.2.3.4/40"]}"#).is_err()
    );
    // Lists only with `allow`, and no other keys.
    for bad in [
        r#"{"mode":"allow-all","domains":["x.test"]}"#,
        r#"{"mode":"deny-all","cidrs":[]}"#,
        r#"{"mode":"allow","ports":[80]}"#,
        r#"{"mode":"open"}"#,
        r#"{"cidrs":[]}"#,
    ] {
        assert!(serde_json::from_str::<EgressPolicy>(bad).is_err(), "{bad}");
    }
    let json = serde_json::to_string(&EgressPolicy::AllowAll).unwrap();
    assert_eq!(json, r#"{"mode":"allow-all"}"#);
}
