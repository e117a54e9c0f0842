//! The host's apt sources, turned into the sources of a Debian root filesystem of another (or
//! the same) suite: the `mmdebstrap` stage builds from exactly the archives, mirrors and keyrings
//! the host uses, never from a hard-coded mirror.
//!
//! Read: `/etc/apt/sources.list`, `/etc/apt/sources.list.d/*.list` (one-line style) and
//! `*.sources` (deb822). Kept: binary (`deb`) entries, enabled, whose suites name the host's
//! codename (`bookworm`, `bookworm-updates`, `bookworm-security`, `bookworm/updates`) or the
//! requested suite itself; the host's codename in them is replaced by the requested suite. Other
//! entries (third-party archives of the host) are left out. Written: one deb822 file.

use std::path::{Path, PathBuf};

/// Where apt's configuration lives.
#[derive(Debug, Clone)]
pub struct AptConfig {
    pub etc: PathBuf,
    pub os_release: PathBuf,
}

impl Default for AptConfig {
    fn default() -> Self {
        Self {
            etc: PathBuf::from("/etc/apt"),
            os_release: PathBuf::from("/etc/os-release"),
        }
    }
}

/// One entry, deb822 fields in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    /// Other fields kept as they are (`Signed-By`, `Architectures`, ...).
    other: Vec<(String, String)>,
}

/// Most bytes read from one sources file.
const MAX_FILE: u64 = 1 << 20;
/// Most sources files read.
const MAX_FILES: usize = 256;

impl AptConfig {
    /// The host's codename (`VERSION_CODENAME` of os-release), when it has one.
    pub fn host_suite(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.os_release).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .filter(|v| nexus_lib::api::pipeline::check_suite(v).is_ok())
    }

    /// The deb822 sources for `suite`; an error says why there are none.
    pub fn sources_for(&self, suite: &str) -> Result<String, String> {
        let host = self.host_suite().unwrap_or_else(|| suite.to_owned());
        let mut entries = Vec::new();
        for (path, text) in self.files()? {
            let parsed = if path.extension().is_some_and(|e| e == "sources") {
                parse_deb822(&text)
            } else {
                parse_one_line(&text)
            };
            entries.extend(parsed.into_iter().filter_map(|e| retarget(e, &host, suite)));
        }
        if entries.is_empty() {
            return Err(format!(
                "the host's apt sources under {} have no `deb` entry for suite {host:?} (or {suite:?}) to build from",
                self.etc.display()
            ));
        }
        Ok(entries.iter().map(render).collect::<Vec<_>>().join("\n"))
    }

    /// A single entry for a mirror that replaces the host's archives, signed by the keyring of
    /// the host's first entry that names one.
    pub fn mirror_sources(&self, mirror: &str, suite: &str) -> String {
        let signed_by = self.files().ok().and_then(|files| {
            files.iter().find_map(|(path, text)| {
                let entries = if path.extension().is_some_and(|e| e == "sources") {
                    parse_deb822(text)
                } else {
                    parse_one_line(text)
                };
                entries.into_iter().find_map(|e| {
                    e.other
                        .into_iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("signed-by"))
                })
            })
        });
        render(&Entry {
            uris: vec![mirror.to_owned()],
            suites: vec![suite.to_owned()],
            components: vec!["main".to_owned()],
            other: signed_by.into_iter().collect(),
        })
    }

    fn files(&self) -> Result<Vec<(PathBuf, String)>, String> {
        let mut paths = vec![self.etc.join("sources.list")];
        let dir = self.etc.join("sources.list.d");
        if let Ok(read) = std::fs::read_dir(&dir) {
            let mut more: Vec<PathBuf> = read
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
                .collect();
            more.sort();
            paths.extend(more);
        }
        paths.truncate(MAX_FILES);
        Ok(paths
            .into_iter()
            .filter_map(|p| read_bounded(&p).map(|t| (p, t)))
            .collect())
    }
}

fn read_bounded(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Replaces the host's codename by `suite` in `e`'s suites; `None` when none is the host's or
/// `suite`.
fn retarget(mut e: Entry, host: &str, suite: &str) -> Option<Entry> {
    e.suites = e
        .suites
        .iter()
        .filter_map(|s| {
            if s == suite {
                Some(s.clone())
            } else if s == host {
                Some(suite.to_owned())
            } else {
                s.strip_prefix(host)
                    .filter(|rest| rest.starts_with(['-', '/']))
                    .map(|rest| format!("{suite}{rest}"))
            }
        })
        .collect();
    e.suites.dedup();
    (!e.suites.is_empty() && !e.uris.is_empty()).then_some(e)
}

fn render(e: &Entry) -> String {
    let mut out = format!(
        "Types: deb\nURIs: {}\nSuites: {}\nComponents: {}\n",
        e.uris.join(" "),
        e.suites.join(" "),
        e.components.join(" ")
    );
    for (k, v) in &e.other {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out
}

/// Whether a field's text is safe to copy into the generated file (one line, printable).
fn printable(v: &str) -> bool {
    !v.is_empty() && v.len() <= 4096 && v.chars().all(|c| c == ' ' || c.is_ascii_graphic())
}

/// deb822 stanzas (`Types`, `URIs`, `Suites`, `Components`, `Enabled`, others kept).
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // A continuation (multi-line fields such as an inline Signed-By key): dropped,
                // and the field with it, since one line cannot carry it.
                if let Some(last) = fields.last_mut() {
                    last.1.clear();
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let words = |name: &str| -> Vec<String> {
            get(name)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        if !words("Types").iter().any(|t| t == "deb") || get("Enabled") == Some("no") {
            continue;
        }
        let known = ["types", "uris", "suites", "components", "enabled"];
        out.push(Entry {
            uris: words("URIs"),
            suites: words("Suites"),
            components: words("Components"),
            other: fields
                .iter()
                .filter(|(k, v)| !known.contains(&k.to_ascii_lowercase().as_str()) && printable(v))
                .cloned()
                .collect(),
        });
    }
    out
}

/// One-line entries: `deb [opt=v ...] URI SUITE COMPONENT...`.
fn parse_one_line(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut other = Vec::new();
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            for opt in opts.split_whitespace() {
                let Some((k, v)) = opt.split_once('=') else {
                    continue;
                };
                let key = match k {
                    "signed-by" => "Signed-By",
                    "arch" => "Architectures",
                    "trusted" => "Trusted",
                    _ => continue,
                };
                if printable(v) {
                    other.push((key.to_owned(), v.replace(',', " ")));
                }
            }
            rest = after.trim();
        }
        let mut words = rest.split_whitespace().map(str::to_owned);
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Entry {
            uris: vec![uri],
            suites: vec![suite],
            components: words.collect(),
            other,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sources: &[(&str, &str)]) -> (tempfile::TempDir, AptConfig) {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("apt");
        std::fs::create_dir_all(etc.join("sources.list.d")).unwrap();
        for (name, text) in sources {
            std::fs::write(etc.join(name), text).unwrap();
        }
        let os_release = dir.path().join("os-release");
        std::fs::write(&os_release, "ID=debian\nVERSION_CODENAME=bookworm\n").unwrap();
        (dir, AptConfig { etc, os_release })
    }

    const DEB822: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://example.org/other\nSuites: stable\nComponents: main\n";

    #[test]
    fn the_hosts_entries_are_kept_for_its_own_suite() {
        let (_d, c) = config(&[("sources.list.d/debian.sources", DEB822)]);
        let text = c.sources_for("bookworm").unwrap();
        assert!(
            text.contains("Suites: bookworm bookworm-updates\n"),
            "{text}"
        );
        assert!(text.contains("Suites: bookworm-security\n"), "{text}");
        assert!(text.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"));
        assert!(!text.contains("example.org"), "{text}");
    }

    #[test]
    fn another_suite_replaces_the_hosts_codename() {
        let (_d, c) = config(&[(
            "sources.list",
            "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\ndeb-src http://x bookworm main\n",
        )]);
        let text = c.sources_for("trixie").unwrap();
        assert_eq!(
            text,
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\nComponents: main contrib\nSigned-By: /k.gpg\n"
        );
    }

    #[test]
    fn no_usable_entry_is_an_error_naming_the_directory() {
        let (_d, c) = config(&[("sources.list", "deb-src http://x bookworm main\n")]);
        assert!(c.sources_for("bookworm").unwrap_err().contains("apt"));
    }
}
