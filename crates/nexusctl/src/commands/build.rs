//! `nexusctl build <verb>`, and what `template build` and `vm create --template` share: waiting
//! for a build with a spinner, or following its log.

use std::io::Write;
use std::time::Duration;

use http_body_util::BodyExt;
use indicatif::{ProgressBar, ProgressStyle};
use nexus_lib::api::{Build, BuildState};
use nexus_lib::client::{Client, ClientError};

use crate::cli::BuildCommand;
use crate::output::{Printer, fields, table};

pub async fn run(client: &Client, out: Printer, cmd: BuildCommand) -> Result<u8, ClientError> {
    match cmd {
        BuildCommand::List(args) => {
            let builds = client.list_builds(args.template.as_deref()).await?;
            out.print(&builds, || {
                let rows: Vec<Vec<String>> = builds
                    .iter()
                    .map(|b| {
                        vec![
                            b.id.to_string(),
                            format!("{}@{}", b.template, b.template_version),
                            b.state.to_string(),
                            if b.cached_from.is_some() { "hit" } else { "-" }.into(),
                            b.image.clone().unwrap_or_else(|| "-".into()),
                            b.duration_ms
                                .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "TEMPLATE", "STATE", "CACHE", "IMAGE", "TIME"],
                    &rows,
                )
            });
        }
        BuildCommand::Show(r) => {
            let b = client.get_build(&r.build).await?;
            out.print(&b, || show(&b));
        }
        BuildCommand::Logs(args) => {
            let id = client.get_build(&args.build).await?.id.to_string();
            copy_log(client, &id, args.follow, &mut std::io::stdout()).await?;
        }
        BuildCommand::Cancel(r) => {
            let b = client.cancel_build(&r.build).await?;
            out.print(&b, || format!("cancelled build {}", b.id));
        }
    }
    Ok(0)
}

/// Copies a build's log to `to` (following it until the build is over when `follow`).
pub async fn copy_log(
    client: &Client,
    build: &str,
    follow: bool,
    to: &mut impl Write,
) -> Result<(), ClientError> {
    let mut body = client.build_logs(build, follow).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Http(e.into()))?;
        if let Some(data) = frame.data_ref() {
            let _ = to.write_all(data);
            let _ = to.flush();
        }
    }
    Ok(())
}

/// Waits for `build` to be over: following its log on stderr, or under a spinner naming its
/// newest step. Returns the final record.
pub async fn wait(
    client: &Client,
    build: Build,
    follow: bool,
    quiet: bool,
) -> Result<Build, ClientError> {
    if build.state.is_final() {
        return Ok(build);
    }
    let id = build.id.to_string();
    if follow {
        copy_log(client, &id, true, &mut std::io::stderr()).await?;
        return client.get_build(&id).await;
    }
    let bar = (!quiet).then(|| {
        let b = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix:>12} {spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.set_prefix(format!("build {}", build.template));
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    loop {
        let b = client.get_build(&id).await?;
        if let Some(bar) = &bar {
            let step = b.steps.last().map_or("-".to_owned(), |s| s.name.clone());
            bar.set_message(format!(
                "{} (steps done: {}, last: {step})",
                b.state,
                b.steps.len()
            ));
        }
        if b.state.is_final() {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(b);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A build that did not succeed, as an error (exit 1).
pub fn failed(b: &Build) -> ClientError {
    ClientError::Api {
        status: 500,
        code: format!("build_{}", b.state),
        message: format!(
            "build {} {}: {} (see `nexusctl build logs {}`)",
            b.id,
            b.state,
            b.error.as_deref().unwrap_or("-"),
            b.id
        ),
        field: None,
    }
}

pub fn show(b: &Build) -> String {
    let mut text = fields(&[
        ("id", b.id.to_string()),
        ("template", format!("{}@{}", b.template, b.template_version)),
        ("state", b.state.to_string()),
        (
            "cache",
            b.cached_from
                .map_or("miss".into(), |from| format!("hit (build {from})")),
        ),
        ("image", b.image.clone().unwrap_or_else(|| "-".into())),
        ("cache key", b.cache_key.clone()),
        ("created", b.created_at.clone()),
        ("ended", b.ended_at.clone().unwrap_or_else(|| "-".into())),
        (
            "time",
            b.duration_ms
                .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
        ),
    ]);
    if let Some(e) = &b.error {
        text += &fields(&[("error", e.clone())]);
    }
    for s in &b.steps {
        text += &format!(
            "  {:<10} {:>8} ms {}\n",
            s.name,
            s.duration_ms,
            if s.ok { "ok" } else { "FAILED" }
        );
    }
    text
}

/// Whether a build's state is a success.
pub fn succeeded(b: &Build) -> bool {
    b.state == BuildState::Succeeded
}
