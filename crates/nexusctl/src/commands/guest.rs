//! `nexusctl vm exec|cp|logs`: working with the guest of a running VM.

use std::io::Write;
use std::time::Duration;

use http_body_util::BodyExt;
use nexus_lib::agent::{ExecEvent, ExecRequest, MAX_STDIN_BYTES};
use nexus_lib::client::{Client, ClientError, reader_body};
use tokio::io::AsyncReadExt;

use crate::cli::{VmCpArgs, VmExecArgs, VmLogsArgs};

/// Runs the command, printing output as it arrives; returns the exit code to exit with.
pub async fn exec(client: &Client, args: VmExecArgs) -> Result<u8, ClientError> {
    let mut req = ExecRequest::new(args.argv);
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("--env {kv:?} is not KEY=VALUE")))?;
        req.env.insert(k.to_owned(), v.to_owned());
    }
    req.cwd = args.workdir;
    req.timeout_ms = args.timeout.map(|s| s.saturating_mul(1000));
    if args.stdin {
        let mut buf = Vec::new();
        tokio::io::stdin()
            .take(MAX_STDIN_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| usage(format!("cannot read stdin: {e}")))?;
        if buf.len() > MAX_STDIN_BYTES {
            return Err(usage(format!(
                "stdin is larger than {MAX_STDIN_BYTES} bytes"
            )));
        }
        req.stdin = Some(buf);
    }
    let mut events = client.exec(&args.vm, &req).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(event) = events.next().await? {
        match event {
            ExecEvent::Stdout { data } => {
                let _ = out.write_all(&data).and_then(|()| out.flush());
            }
            ExecEvent::Stderr { data } => {
                let _ = err.write_all(&data).and_then(|()| err.flush());
            }
            ExecEvent::Exit {
                code,
                signal,
                timed_out,
            } => {
                return Ok(match (timed_out, code, signal) {
                    (true, _, _) => 124,
                    (_, Some(c), _) => c.clamp(0, 255) as u8,
                    (_, None, Some(s)) => 128u8.saturating_add(s.clamp(0, 127) as u8),
                    _ => 1,
                });
            }
            ExecEvent::Error { message } => {
                eprintln!("nexusctl: exec failed in the guest: {message}");
                return Ok(1);
            }
        }
    }
    Err(ClientError::Decode(
        "exec stream ended without an exit status".into(),
    ))
}

/// Copies a file between the host and a guest.
pub async fn cp(client: &Client, args: VmCpArgs) -> Result<(), ClientError> {
    match (remote(&args.from), remote(&args.to)) {
        (None, Some((vm, path))) => {
            let file = tokio::fs::File::open(&args.from)
                .await
                .map_err(|e| usage(format!("cannot open {}: {e}", args.from)))?;
            let mode = file
                .metadata()
                .await
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                .unwrap_or(0o644);
            client
                .write_file(vm, path, mode, reader_body(file))
                .await
                .map(drop)
        }
        (Some((vm, path)), None) => {
            let mut body = client.read_file(vm, path).await?;
            let tmp = format!("{}.nexus-partial", args.to);
            let mut out = std::fs::File::create(&tmp)
                .map_err(|e| usage(format!("cannot create {tmp}: {e}")))?;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError::Http(e.into()))?;
                if let Some(data) = frame.data_ref() {
                    out.write_all(data)
                        .map_err(|e| usage(format!("cannot write {tmp}: {e}")))?;
                }
            }
            std::fs::rename(&tmp, &args.to)
                .map_err(|e| usage(format!("cannot rename {tmp} to {}: {e}", args.to)))
        }
        _ => Err(usage(
            "exactly one of the two paths must be VM:/path (e.g. `vm cp ./f web-1:/tmp/f`)".into(),
        )),
    }
}

/// `VM:/abs/path` → (VM, /abs/path).
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (vm, path) = arg.split_once(':')?;
    (!vm.is_empty() && !vm.contains('/') && path.starts_with('/')).then_some((vm, path))
}

/// Prints the console, and keeps following it with `-f`.
pub async fn logs(client: &Client, args: VmLogsArgs) -> Result<(), ClientError> {
    let (text, mut offset) = client.console(&args.vm, Some(args.tail), None).await?;
    let mut out = std::io::stdout();
    let _ = out.write_all(&text).and_then(|()| out.flush());
    if !args.follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (text, end) = client.console(&args.vm, None, Some(offset)).await?;
        let _ = out.write_all(&text).and_then(|()| out.flush());
        offset = end;
    }
}

pub(super) fn usage(message: String) -> ClientError {
    ClientError::Api {
        status: 400,
        code: "usage".into(),
        message,
        field: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_recognised() {
        assert_eq!(remote("web-1:/tmp/x"), Some(("web-1", "/tmp/x")));
        assert_eq!(remote("./local"), None);
        assert_eq!(remote("dir/a:b"), None);
        assert_eq!(remote("web-1:relative"), None);
    }
}
