//! Running a download and drawing its progress: one indicatif bar per stage (bytes when the
//! stage reports them, a spinner otherwise) on stderr, which indicatif leaves blank when it is
//! not a terminal. The result goes through the printer like any other command's.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use nexus_lib::api::{Asset, DownloadEvent, DownloadRequest};
use nexus_lib::client::{Client, ClientError};

use crate::cli::VarArgs;

/// The request for `provider` with `vars` plus the `--set` ones.
pub fn request(
    provider: String,
    named: &[(&str, Option<String>)],
    extra: &VarArgs,
) -> DownloadRequest {
    let mut vars: BTreeMap<String, String> = extra.set.iter().cloned().collect();
    for (key, value) in named {
        if let Some(v) = value {
            vars.insert((*key).to_owned(), v.clone());
        }
    }
    DownloadRequest { provider, vars }
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// A kernel build counts the objects it compiled (kbuild's `CC`, `LD`, … lines).
fn count_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} {spinner} {pos} objects built, {elapsed} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} {spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// The HTTP status that stands for a failed run's code, for the exit code.
fn status_of(code: &str) -> u16 {
    match code {
        "not_found" => 404,
        "conflict" | "busy" => 409,
        "invalid" => 422,
        _ => 500,
    }
}

/// Runs the download, drawing bars unless `quiet`; returns the installed assets.
pub async fn run(
    client: &Client,
    req: &DownloadRequest,
    quiet: bool,
) -> Result<Vec<Asset>, ClientError> {
    let mut events = client.download(req).await?;
    let mut bar: Option<ProgressBar> = None;
    let mut counting = false;
    let finish = |bar: &mut Option<ProgressBar>| {
        if let Some(b) = bar.take() {
            b.finish();
        }
    };
    while let Some(event) = events.next().await? {
        match event {
            DownloadEvent::Stage {
                index,
                count,
                stage,
                detail,
            } => {
                finish(&mut bar);
                counting = stage == "kernel-build";
                if quiet {
                    continue;
                }
                let b = ProgressBar::new_spinner().with_style(spinner_style());
                b.set_prefix(format!("[{}/{count}] {stage}", index + 1));
                b.set_message(detail);
                b.enable_steady_tick(Duration::from_millis(120));
                bar = Some(b);
            }
            DownloadEvent::Progress { bytes, total, .. } => {
                if let Some(b) = &bar {
                    if counting {
                        b.set_style(count_style());
                    } else if b.length().is_none() || total != b.length() {
                        b.set_style(bytes_style());
                        if let Some(t) = total {
                            b.set_length(t);
                        }
                    }
                    b.set_position(bytes);
                }
            }
            DownloadEvent::Note { message, .. } => match &bar {
                Some(b) => b.set_message(message),
                None if !quiet => eprintln!("  {message}"),
                None => {}
            },
            DownloadEvent::Done { assets } => {
                finish(&mut bar);
                return Ok(assets);
            }
            DownloadEvent::Error { code, message, .. } => {
                if let Some(b) = bar.take() {
                    b.abandon();
                }
                return Err(ClientError::Api {
                    status: status_of(&code),
                    code,
                    message,
                    field: None,
                });
            }
        }
    }
    finish(&mut bar);
    Err(ClientError::Decode(
        "the download stream ended without a result (nexusd stopped?)".into(),
    ))
}
