//! The config fragment and the check that it survived: kconfig drops an option whose dependency
//! is not enabled without a word (`merge_config.sh` only warns about values it overrode), so after
//! `make olddefconfig` every line of the fragment is looked up in the final `.config`.

use std::collections::HashMap;
use std::fmt;

/// One requirement of a fragment: `CONFIG_X=value`, or `# CONFIG_X is not set` (also `CONFIG_X=n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    /// `None`: the option must end up off (absent, `is not set`, or `=n`).
    pub value: Option<String>,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.name),
            None => write!(f, "# {} is not set", self.name),
        }
    }
}

/// A requirement the final configuration does not meet, and what it holds instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub wanted: Requirement,
    /// The option's value in the final `.config`; `None` when it is off.
    pub got: Option<String>,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.got {
            Some(v) => write!(
                f,
                "{} (the build has {}={v})",
                self.wanted, self.wanted.name
            ),
            None => write!(f, "{} (the build has it off)", self.wanted),
        }
    }
}

/// The requirements of a fragment, in file order. Blank lines and other comments are skipped;
/// a line that is neither is returned as an error naming its line number.
pub fn parse_fragment(text: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = not_set(line) {
            out.push(Requirement {
                name: name.to_owned(),
                value: None,
            });
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else if let Some((name, value)) = assignment(line) {
            out.push(Requirement {
                name: name.to_owned(),
                value: (value != "n").then(|| value.to_owned()),
            });
        } else {
            return Err(format!("line {}: {line:?} is not CONFIG_NAME=value", n + 1));
        }
    }
    Ok(out)
}

/// The requirements of `fragment` that `config` (the text of a final `.config`) does not meet.
pub fn unmet(fragment: &[Requirement], config: &str) -> Vec<Unmet> {
    let values: HashMap<&str, &str> = config
        .lines()
        .filter_map(|l| assignment(l.trim()))
        .filter(|(_, v)| *v != "n")
        .collect();
    fragment
        .iter()
        .filter_map(|req| {
            let got = values.get(req.name.as_str()).map(|v| (*v).to_owned());
            (got != req.value).then(|| Unmet {
                wanted: req.clone(),
                got,
            })
        })
        .collect()
}

/// `# CONFIG_X is not set` → `CONFIG_X`.
fn not_set(line: &str) -> Option<&str> {
    let name = line.strip_prefix("# ")?.strip_suffix(" is not set")?;
    is_option_name(name).then_some(name)
}

/// `CONFIG_X=value` → (`CONFIG_X`, `value`).
fn assignment(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once('=')?;
    (is_option_name(name) && !value.is_empty()).then_some((name, value))
}

fn is_option_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, value: Option<&str>) -> Requirement {
        Requirement {
            name: name.into(),
            value: value.map(str::to_owned),
        }
    }

    #[test]
    fn fragment_lines_become_requirements_and_prose_comments_are_skipped() {
        let text = "# Virtio\nCONFIG_VIRTIO_MMIO=y\n\n# CONFIG_MODULES is not set\nCONFIG_LOCALVERSION=\"-nexus\"\nCONFIG_SWAP=n\n";

        let reqs = parse_fragment(text).unwrap();

        assert_eq!(
            reqs,
            [
                req("CONFIG_VIRTIO_MMIO", Some("y")),
                req("CONFIG_MODULES", None),
                req("CONFIG_LOCALVERSION", Some("\"-nexus\"")),
                req("CONFIG_SWAP", None),
            ]
        );
    }

    #[test]
    fn a_line_that_is_not_an_option_is_refused_with_its_number() {
        let err = parse_fragment("CONFIG_A=y\nvirtio=y\n").unwrap_err();

        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn a_fragment_that_survived_has_nothing_unmet() {
        let reqs = parse_fragment("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n").unwrap();
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\nCONFIG_D=y\n";

        assert_eq!(unmet(&reqs, config), []);
    }

    #[test]
    fn an_option_dropped_by_olddefconfig_is_reported_off() {
        let reqs = parse_fragment("CONFIG_PVH=y\nCONFIG_A=y\n").unwrap();
        let config = "CONFIG_A=y\n# CONFIG_PVH is not set\n";

        let lost = unmet(&reqs, config);

        assert_eq!(
            lost,
            [Unmet {
                wanted: req("CONFIG_PVH", Some("y")),
                got: None
            }]
        );
        assert_eq!(lost[0].to_string(), "CONFIG_PVH=y (the build has it off)");
    }

    #[test]
    fn an_option_absent_from_the_config_counts_as_off() {
        let reqs = parse_fragment("CONFIG_VSOCKETS=y\n# CONFIG_MODULES is not set\n").unwrap();

        let lost = unmet(&reqs, "CONFIG_64BIT=y\n");

        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].wanted.name, "CONFIG_VSOCKETS");
    }

    #[test]
    fn an_option_that_must_be_off_but_is_on_is_reported_with_its_value() {
        let reqs = parse_fragment("# CONFIG_MODULES is not set\n").unwrap();

        let lost = unmet(&reqs, "CONFIG_MODULES=y\n");

        assert_eq!(
            lost[0].to_string(),
            "# CONFIG_MODULES is not set (the build has CONFIG_MODULES=y)"
        );
    }

    #[test]
    fn a_built_in_option_that_became_a_module_is_unmet() {
        let reqs = parse_fragment("CONFIG_VIRTIO_BLK=y\n").unwrap();

        let lost = unmet(&reqs, "CONFIG_VIRTIO_BLK=m\n");

        assert_eq!(lost[0].got.as_deref(), Some("m"));
    }

    #[test]
    fn a_different_string_value_is_unmet() {
        let reqs = parse_fragment("CONFIG_LOCALVERSION=\"-nexus\"\n").unwrap();

        let lost = unmet(&reqs, "CONFIG_LOCALVERSION=\"\"\n");

        assert_eq!(lost.len(), 1);
    }

    #[test]
    fn the_repository_fragment_parses_and_builds_no_modules() {
        let text = include_str!("../../../../../kernel/nexus-guest.config");

        let reqs = parse_fragment(text).unwrap();

        assert!(reqs.contains(&req("CONFIG_MODULES", None)));
        assert!(reqs.contains(&req("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", Some("y"))));
        assert!(reqs.contains(&req("CONFIG_64BIT", Some("y"))));
    }
}
