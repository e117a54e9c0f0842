//! PTY sessions that outlive their clients: a bounded registry, each session's scrollback ring
//! and the fan-out of its output to every attached client.
//!
//! One task per session reads the PTY; under the session's lock it appends to the scrollback
//! and broadcasts the chunk, so an attach (snapshot + subscribe under the same lock) sees every
//! byte exactly once. Input from any client is written to the PTY in arrival order.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nexus_lib::terminal::{
    MAX_CLIENTS_PER_SESSION, MAX_SESSIONS, SCROLLBACK_BYTES, SESSION_ID_LEN, SessionInfo, TermOpen,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{broadcast, watch};

use crate::pty::{self, Pty};
use crate::sysinfo;

/// Output chunks buffered per client before it counts as too slow.
const CLIENT_BACKLOG: usize = 256;
const READ_CHUNK: usize = 16 * 1024;
/// How long output is still read after the process exited (a background child may hold the
/// terminal open for ever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// How long an exited session stays listed, so a client that was away sees how it ended.
const KEEP_EXITED: Duration = Duration::from_secs(60);

/// How a session's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Why a client could not be attached.
#[derive(Debug)]
pub enum OpenError {
    NotFound(String),
    TooMany(String),
    Spawn(String),
}

impl OpenError {
    pub fn message(&self) -> &str {
        match self {
            Self::NotFound(m) | Self::TooMany(m) | Self::Spawn(m) => m,
        }
    }
}

/// Every session of this guest.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

pub struct Session {
    pub id: String,
    argv: Vec<String>,
    started_ms: u64,
    pid: Option<u32>,
    pub pty: Pty,
    /// Serialises writes so two clients' keystrokes never interleave inside one chunk.
    write_lock: tokio::sync::Mutex<()>,
    state: Mutex<Shared>,
    output: broadcast::Sender<Bytes>,
    exited: watch::Sender<Option<ExitInfo>>,
}

struct Shared {
    scrollback: VecDeque<u8>,
    clients: usize,
    cols: u16,
    rows: u16,
    exit: Option<ExitInfo>,
}

/// One client's view of a session: the scrollback at attach, then live output.
pub struct Attachment {
    pub session: Arc<Session>,
    pub created: bool,
    pub scrollback: Bytes,
    pub output: broadcast::Receiver<Bytes>,
    pub exited: watch::Receiver<Option<ExitInfo>>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut st = self.session.lock();
        st.clients = st.clients.saturating_sub(1);
    }
}

impl Sessions {
    /// Starts a new session or attaches to an existing one, as `open` asks.
    pub fn open(self: &Arc<Self>, open: &TermOpen) -> Result<Attachment, OpenError> {
        let (session, created) = match &open.session {
            Some(id) => {
                let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
                let session = map
                    .get(id)
                    .cloned()
                    .ok_or_else(|| OpenError::NotFound(format!("no session {id}")))?;
                (session, false)
            }
            None => (self.start(open)?, true),
        };
        let mut st = session.lock();
        if st.clients >= MAX_CLIENTS_PER_SESSION {
            return Err(OpenError::TooMany(format!(
                "session {} already has {MAX_CLIENTS_PER_SESSION} clients",
                session.id
            )));
        }
        st.clients += 1;
        if !created && st.exit.is_none() {
            st.cols = open.cols;
            st.rows = open.rows;
            let _ = session.pty.resize(open.cols, open.rows);
        }
        let (a, b) = st.scrollback.as_slices();
        let scrollback = Bytes::from([a, b].concat());
        let output = session.output.subscribe();
        drop(st);
        Ok(Attachment {
            exited: session.exited.subscribe(),
            session,
            created,
            scrollback,
            output,
        })
    }

    fn start(self: &Arc<Self>, open: &TermOpen) -> Result<Arc<Session>, OpenError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            return Err(OpenError::TooMany(format!(
                "this VM already has {MAX_SESSIONS} sessions; kill one first"
            )));
        }
        let term = open.term.as_deref().unwrap_or("xterm-256color");
        let (pty, child) = pty::spawn(&open.argv, term, open.cols, open.rows).map_err(|e| {
            let program = open.argv.first().map_or(pty::SHELL, String::as_str);
            OpenError::Spawn(format!("cannot start {program}: {e}"))
        })?;
        let id = loop {
            let id = new_id().map_err(|e| OpenError::Spawn(format!("session id: {e}")))?;
            if !map.contains_key(&id) {
                break id;
            }
        };
        let argv = if open.argv.is_empty() {
            vec![pty::SHELL.to_string()]
        } else {
            open.argv.clone()
        };
        let session = Arc::new(Session {
            id: id.clone(),
            argv,
            started_ms: sysinfo::uptime_ms(),
            pid: child.id(),
            pty,
            write_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(Shared {
                scrollback: VecDeque::new(),
                clients: 0,
                cols: open.cols,
                rows: open.rows,
                exit: None,
            }),
            output: broadcast::channel(CLIENT_BACKLOG).0,
            exited: watch::channel(None).0,
        });
        map.insert(id, session.clone());
        tokio::spawn(run(self.clone(), session.clone(), child));
        Ok(session)
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<SessionInfo> = map.values().map(|s| s.info()).collect();
        list.sort_by_key(|s| s.started_ms);
        list
    }

    /// Kills the session's process group and forgets the session; attached clients see the exit.
    pub fn kill(&self, id: &str) -> bool {
        let session = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match session {
            Some(session) => {
                if let Some(pid) = session.pid {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                true
            }
            None => false,
        }
    }

    fn forget(&self, session: &Arc<Session>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&session.id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            map.remove(&session.id);
        }
    }
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self) -> SessionInfo {
        let st = self.lock();
        SessionInfo {
            id: self.id.clone(),
            argv: self.argv.clone(),
            cols: st.cols,
            rows: st.rows,
            clients: st.clients,
            started_ms: self.started_ms,
            exit_code: st.exit.and_then(|e| e.code),
            exit_signal: st.exit.and_then(|e| e.signal),
            running: st.exit.is_none(),
        }
    }

    /// Input from a client.
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        let _order = self.write_lock.lock().await;
        self.pty.write_all(data).await
    }

    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let mut st = self.lock();
        if st.exit.is_some() {
            return Ok(());
        }
        st.cols = cols;
        st.rows = rows;
        self.pty.resize(cols, rows)
    }

    pub fn signal(&self, signal: i32) -> io::Result<()> {
        self.pty.signal(signal, self.pid)
    }

    fn record_output(&self, data: &[u8]) {
        let mut st = self.lock();
        let ring = &mut st.scrollback;
        if data.len() >= SCROLLBACK_BYTES {
            ring.clear();
            ring.extend(&data[data.len() - SCROLLBACK_BYTES..]);
        } else {
            let over = (ring.len() + data.len()).saturating_sub(SCROLLBACK_BYTES);
            ring.drain(..over);
            ring.extend(data);
        }
        // No receiver is fine: a session without clients keeps running.
        let _ = self.output.send(Bytes::copy_from_slice(data));
    }
}

/// The session's own task: reads the PTY until the process has exited and its output drained,
/// then records the exit and, a while later, forgets the session.
async fn run(sessions: Arc<Sessions>, session: Arc<Session>, mut child: tokio::process::Child) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut status = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let deadline = async {
            match drain_until {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = session.pty.read(&mut buf) => match n {
                Ok(n) if n > 0 => session.record_output(&buf[..n]),
                _ => break,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = deadline => break,
        }
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await,
    };
    let exit = match status {
        Ok(s) => ExitInfo {
            code: s.code(),
            signal: s.signal(),
        },
        Err(_) => ExitInfo {
            code: None,
            signal: None,
        },
    };
    session.lock().exit = Some(exit);
    session.exited.send_replace(Some(exit));
    tokio::time::sleep(KEEP_EXITED).await;
    sessions.forget(&session);
}

fn new_id() -> io::Result<String> {
    let mut bytes = [0u8; SESSION_ID_LEN / 2];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(argv: &[&str]) -> TermOpen {
        TermOpen {
            cols: 80,
            rows: 24,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..TermOpen::default()
        }
    }

    async fn read_until(att: &mut Attachment, needle: &str) -> String {
        let mut seen = String::from_utf8_lossy(&att.scrollback).into_owned();
        let read = async {
            while !seen.contains(needle) {
                let chunk = att.output.recv().await.expect("output");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {seen:?}"));
        seen
    }

    #[tokio::test]
    async fn shell_session_runs_input_and_reports_its_exit_code() {
        let sessions = Arc::new(Sessions::default());
        let mut att = sessions.open(&open(&["/bin/sh"])).unwrap();

        att.session.write(b"echo $((6*7))\n").await.unwrap();
        read_until(&mut att, "42").await;
        att.session.write(b"exit 3\n").await.unwrap();
        let exit = tokio::time::timeout(
            Duration::from_secs(10),
            att.exited.wait_for(Option::is_some),
        )
        .await
        .expect("exit within 10 s")
        .map(|e| *e)
        .unwrap();

        assert_eq!(
            exit,
            Some(ExitInfo {
                code: Some(3),
                signal: None
            })
        );
    }

    #[tokio::test]
    async fn second_attach_replays_the_scrollback_and_sees_the_window_size() {
        let sessions = Arc::new(Sessions::default());
        let mut first = sessions.open(&open(&["/bin/sh"])).unwrap();
        first.session.write(b"echo mark-$((1+1))\n").await.unwrap();
        read_until(&mut first, "mark-2").await;
        let again = TermOpen {
            session: Some(first.session.id.clone()),
            cols: 100,
            rows: 30,
            ..TermOpen::default()
        };

        let mut second = sessions.open(&again).unwrap();
        second.session.write(b"stty size\n").await.unwrap();

        assert!(String::from_utf8_lossy(&second.scrollback).contains("mark-2"));
        read_until(&mut second, "30 100").await;
        assert_eq!(sessions.list()[0].clients, 2);
        assert!(sessions.kill(&first.session.id));
    }

    #[test]
    fn unknown_session_is_not_found() {
        let sessions = Arc::new(Sessions::default());
        let attach = TermOpen {
            session: Some("0123456789ab".into()),
            ..open(&[])
        };

        assert!(matches!(
            sessions.open(&attach),
            Err(OpenError::NotFound(_))
        ));
    }
}
