//! What a build was made from and what it produced: the inputs (whose hash names the output
//! directory, so the same inputs are a cache hit), the record written next to the outputs, and
//! `SHA256SUMS` over the kernel images.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever the build's steps change in a way that changes its outputs (targets, make
/// variables, how the fragment is merged), so an old build is not taken for a new one.
pub const RECIPE: u32 = 1;

/// Everything the outputs depend on. Two builds with equal inputs are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInputs {
    /// [`RECIPE`] at the time of the build.
    pub recipe: u32,
    /// `name version` of the Debian source package, when the source came from one.
    pub source_package: Option<String>,
    /// File name of the source tarball, e.g. `linux-source-6.1.tar.xz`.
    pub source_tarball: String,
    pub source_sha256: String,
    pub fragment_sha256: String,
    /// First line of `gcc --version`.
    pub compiler: String,
    /// First line of `ld --version`.
    pub linker: String,
}

impl BuildInputs {
    /// The hash of the inputs (sha256 of their JSON form, first 16 hex digits): the name of
    /// the build's output directory.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).expect("inputs serialise");
        let mut hex = format!("{:x}", Sha256::digest(&json));
        hex.truncate(16);
        hex
    }
}

/// `inputs.json` next to the outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub key: String,
    pub inputs: BuildInputs,
    /// `make kernelrelease`, e.g. `6.1.192-nexus`.
    pub kernel_release: String,
    /// Wall time of configure + compile, in seconds.
    pub build_secs: f64,
    /// When the build finished (seconds since the Unix epoch).
    pub built_at: u64,
}

impl BuildRecord {
    /// Whether this record describes a build of `inputs`.
    pub fn matches(&self, inputs: &BuildInputs) -> bool {
        self.key == inputs.key() && &self.inputs == inputs
    }
}

/// `SHA256SUMS` in `sha256sum`'s format: `<hex>  <name>` a line.
pub fn format_sums(entries: &[(&str, String)]) -> String {
    entries
        .iter()
        .map(|(name, hash)| format!("{hash}  {name}\n"))
        .collect()
}

/// The `(name, hash)` pairs of a `SHA256SUMS` text; `None` when a line is malformed or a name
/// is not a plain file name.
pub fn parse_sums(text: &str) -> Option<Vec<(String, String)>> {
    text.lines()
        .map(|line| {
            let (hash, name) = line.split_once("  ")?;
            let plain = !name.is_empty() && !name.contains('/') && name != "..";
            let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            (plain && hex).then(|| (name.to_owned(), hash.to_ascii_lowercase()))
        })
        .collect()
}

/// sha256 of everything `reader` yields, as lowercase hex.
pub fn sha256_reader(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(format!("{:x}", hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// sha256 of the file at `path`, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_reader(std::fs::File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> BuildInputs {
        BuildInputs {
            recipe: RECIPE,
            source_package: Some("linux-source-6.1 6.1.192-2".into()),
            source_tarball: "linux-source-6.1.tar.xz".into(),
            source_sha256: "a".repeat(64),
            fragment_sha256: "b".repeat(64),
            compiler: "gcc (Debian 12.2.0-14+deb12u1) 12.2.0".into(),
            linker: "GNU ld (GNU Binutils for Debian) 2.40".into(),
        }
    }

    fn record(inputs: BuildInputs) -> BuildRecord {
        BuildRecord {
            key: inputs.key(),
            inputs,
            kernel_release: "6.1.192-nexus".into(),
            build_secs: 312.5,
            built_at: 1_700_000_000,
        }
    }

    #[test]
    fn equal_inputs_have_equal_keys() {
        assert_eq!(inputs().key(), inputs().key());
        assert_eq!(inputs().key().len(), 16);
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = inputs().key();
        let changed = [
            BuildInputs {
                recipe: RECIPE + 1,
                ..inputs()
            },
            BuildInputs {
                source_package: Some("linux-source-6.1 6.1.193-1".into()),
                ..inputs()
            },
            BuildInputs {
                source_package: None,
                ..inputs()
            },
            BuildInputs {
                source_tarball: "linux-source-6.2.tar.xz".into(),
                ..inputs()
            },
            BuildInputs {
                source_sha256: "c".repeat(64),
                ..inputs()
            },
            BuildInputs {
                fragment_sha256: "c".repeat(64),
                ..inputs()
            },
            BuildInputs {
                compiler: "gcc (Debian 13.2.0-1) 13.2.0".into(),
                ..inputs()
            },
            BuildInputs {
                linker: "GNU ld 2.41".into(),
                ..inputs()
            },
        ];

        for other in changed {
            assert_ne!(other.key(), base, "{other:?}");
        }
    }

    #[test]
    fn a_record_round_trips_through_json_and_matches_its_inputs() {
        let rec = record(inputs());

        let back: BuildRecord =
            serde_json::from_str(&serde_json::to_string_pretty(&rec).unwrap()).unwrap();

        assert_eq!(back, rec);
        assert!(back.matches(&inputs()));
    }

    #[test]
    fn a_record_of_other_inputs_is_not_a_cache_hit() {
        let rec = record(inputs());
        let newer = BuildInputs {
            fragment_sha256: "d".repeat(64),
            ..inputs()
        };

        assert!(!rec.matches(&newer));
    }

    #[test]
    fn a_record_whose_key_was_edited_is_not_a_cache_hit() {
        let mut rec = record(inputs());
        rec.key = "0".repeat(16);

        assert!(!rec.matches(&inputs()));
    }

    #[test]
    fn sums_are_in_sha256sum_format_and_parse_back() {
        let text = format_sums(&[("vmlinux", "1".repeat(64)), ("bzImage", "2".repeat(64))]);

        assert_eq!(
            text,
            format!("{}  vmlinux\n{}  bzImage\n", "1".repeat(64), "2".repeat(64))
        );
        assert_eq!(
            parse_sums(&text).unwrap(),
            [
                ("vmlinux".to_owned(), "1".repeat(64)),
                ("bzImage".to_owned(), "2".repeat(64))
            ]
        );
    }

    #[test]
    fn sums_naming_a_path_or_a_short_hash_are_refused() {
        assert_eq!(
            parse_sums(&format!("{}  ../vmlinux\n", "1".repeat(64))),
            None
        );
        assert_eq!(parse_sums("abc  vmlinux\n"), None);
    }

    #[test]
    fn sha256_of_a_known_string() {
        assert_eq!(
            sha256_reader(&b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
