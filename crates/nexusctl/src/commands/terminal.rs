//! `nexusctl vm shell|attach|sessions`: interactive terminals in a VM over the daemon's
//! WebSocket. The local terminal is put in raw mode for the session's length, its size is sent
//! at the start and on every SIGWINCH, and the detach keys leave the session running.

use std::io::{IsTerminal, Read, Write};

use nexus_lib::client::{Client, ClientError};
use nexus_lib::term_client::{TermEvent, Terminal};
use nexus_lib::terminal::{TermControl, TermOpen};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::detach::{Detach, Typed};
use super::guest::usage;
use crate::cli::{TerminalOpts, VmAttachArgs, VmShellArgs};
use crate::output::{Printer, table};

/// How a terminal ended.
enum Outcome {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Detached,
    Closed(String),
}

pub async fn shell(client: &Client, args: VmShellArgs) -> Result<u8, ClientError> {
    run(client, &args.vm, None, args.argv, &args.opts).await
}

pub async fn attach(client: &Client, args: VmAttachArgs) -> Result<u8, ClientError> {
    let session = match args.session {
        Some(s) => s,
        None => only_running_session(client, &args.vm).await?,
    };
    run(client, &args.vm, Some(session), Vec::new(), &args.opts).await
}

async fn only_running_session(client: &Client, vm: &str) -> Result<String, ClientError> {
    let running: Vec<String> = client
        .terminal_sessions(vm)
        .await?
        .into_iter()
        .filter(|s| s.running)
        .map(|s| s.id)
        .collect();
    match running.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(usage(format!(
            "VM {vm} has no running session; start one with `nexusctl vm shell {vm}`"
        ))),
        many => Err(usage(format!(
            "VM {vm} has {} running sessions ({}); name one: `nexusctl vm attach {vm} SESSION`",
            many.len(),
            many.join(", ")
        ))),
    }
}

pub async fn sessions(client: &Client, out: Printer, vm: &str) -> Result<(), ClientError> {
    let list = client.terminal_sessions(vm).await?;
    out.print(&list, || {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|s| {
                let state = match (s.running, s.exit_code, s.exit_signal) {
                    (true, _, _) => "running".to_string(),
                    (false, Some(c), _) => format!("exited {c}"),
                    (false, None, Some(sig)) => format!("killed by signal {sig}"),
                    _ => "ended".to_string(),
                };
                vec![
                    s.id.clone(),
                    s.argv.join(" "),
                    format!("{}x{}", s.cols, s.rows),
                    s.clients.to_string(),
                    state,
                ]
            })
            .collect();
        table(&["ID", "COMMAND", "SIZE", "CLIENTS", "STATE"], &rows)
    });
    Ok(())
}

async fn run(
    client: &Client,
    vm: &str,
    session: Option<String>,
    argv: Vec<String>,
    opts: &TerminalOpts,
) -> Result<u8, ClientError> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "standard input is not a terminal: `vm shell`/`vm attach` are interactive; use `nexusctl vm exec [-i] VM -- CMD` for scripts and pipes".into(),
        ));
    }
    let detach = Detach::parse(&opts.detach_keys).map_err(usage)?;
    let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
    let open = TermOpen {
        session,
        cols: cols.clamp(1, nexus_lib::terminal::MAX_COLS),
        rows: rows.clamp(1, nexus_lib::terminal::MAX_ROWS),
        term: std::env::var("TERM").ok().filter(|t| !t.is_empty()),
        argv,
    };
    let mut term = client.open_terminal(vm, &open).await?;
    let (outcome, id) = {
        let _raw = RawMode::enter().map_err(|e| usage(format!("cannot set raw mode: {e}")))?;
        pump(&mut term, detach, vm).await?
    };
    let id = id.unwrap_or_default();
    Ok(match outcome {
        Outcome::Exited { code, signal } => match (code, signal) {
            (Some(c), _) => c.clamp(0, 255) as u8,
            (None, Some(s)) => 128u8.saturating_add(s.clamp(0, 127) as u8),
            _ => 1,
        },
        Outcome::Detached => {
            term.detach().await;
            eprintln!(
                "nexusctl: detached from session {id}; it keeps running (`nexusctl vm attach {vm} {id}`)"
            );
            0
        }
        Outcome::Closed(reason) => {
            eprintln!("nexusctl: terminal closed: {reason}");
            1
        }
    })
}

/// Moves bytes until the session exits, the client detaches or the server closes.
async fn pump(
    term: &mut Terminal,
    mut detach: Detach,
    vm: &str,
) -> Result<(Outcome, Option<String>), ClientError> {
    let mut stdin = stdin_reader();
    let mut winch =
        signal(SignalKind::window_change()).map_err(|e| usage(format!("SIGWINCH: {e}")))?;
    let mut stdout = std::io::stdout();
    let mut id = None;
    let outcome = loop {
        tokio::select! {
            typed = stdin.recv() => match typed {
                Some(bytes) => match detach.feed(&bytes) {
                    Typed::Send(b) => if !b.is_empty() { term.send_input(&b).await? },
                    Typed::Detach(b) => {
                        if !b.is_empty() { term.send_input(&b).await? }
                        break Outcome::Detached;
                    }
                },
                // stdin closed: nothing more can be typed; leave the session running.
                None => break Outcome::Detached,
            },
            _ = winch.recv() => {
                if let Ok((cols, rows)) = crossterm::terminal::size()
                    && cols > 0 && rows > 0
                {
                    let cols = cols.min(nexus_lib::terminal::MAX_COLS);
                    let rows = rows.min(nexus_lib::terminal::MAX_ROWS);
                    term.send_control(&TermControl::Resize { cols, rows }).await?;
                }
            }
            event = term.next() => match event? {
                Some(TermEvent::Output(data)) => {
                    let _ = stdout.write_all(&data).and_then(|()| stdout.flush());
                }
                Some(TermEvent::Control(TermControl::Session { id: sid, created })) => {
                    let verb = if created { "started" } else { "attached to" };
                    let _ = write!(
                        stdout,
                        "[nexusctl: {verb} session {sid} of {vm}; detach with {}]\r\n",
                        detach.text()
                    );
                    let _ = stdout.flush();
                    id = Some(sid);
                }
                Some(TermEvent::Control(TermControl::Exit { code, signal })) => {
                    break Outcome::Exited { code, signal };
                }
                Some(TermEvent::Control(TermControl::Closed { reason })) => {
                    break Outcome::Closed(reason);
                }
                Some(TermEvent::Control(_)) => {}
                None => break Outcome::Closed("the connection to nexusd ended".into()),
            },
        }
    };
    Ok((outcome, id))
}

/// Typed bytes from a thread blocked in `read(0)` (the thread ends with the process).
fn stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The local terminal in raw mode until dropped.
struct RawMode;

impl RawMode {
    fn enter() -> std::io::Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}
