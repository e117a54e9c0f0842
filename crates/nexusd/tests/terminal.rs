//! Terminals end to end: `nexusctl vm shell`/`vm attach` driven inside tmux as a person would
//! (keys sent, the screen read back), and the WebSocket API through the typed client.
//!
//! Needs what VM tests need (see vm_boot.rs) plus tmux. Each test uses its own tmux server
//! (`tmux -L <unique>`), killed on drop, and bounds every wait.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{TestDaemon, nexusctl_bin, rt};
use nexus_lib::term_client::{TermEvent, Terminal};
use nexus_lib::terminal::{TermControl, TermOpen};

const WAIT: Duration = Duration::from_secs(30);

/// A tmux server of this test's own, with one window running a host shell.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, cols: u16, rows: u16) -> Self {
        assert!(
            Command::new("tmux").arg("-V").output().is_ok(),
            "terminal tests need tmux (apt-get install tmux; scripts/setup.sh)"
        );
        let t = Self {
            socket: format!("nx-term-{}-{name}", std::process::id()),
        };
        let out = t.run(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            "env PS1='host$ ' sh",
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        t
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux")
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", "main", "-l", text]);
        self.run(&["send-keys", "-t", "main", "Enter"]);
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// The pane's text, with its history.
    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-t", "main", "-S", "-2000"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `pred`; panics with the screen after [`WAIT`].
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited {WAIT:?} for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn clear(&self) {
        self.type_line("clear");
        std::thread::sleep(Duration::from_millis(300));
        self.run(&["clear-history", "-t", "main"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        // tmux leaves the socket file behind after kill-server.
        let dir = std::env::var("TMUX_TMPDIR").unwrap_or_else(|_| "/tmp".into());
        let uid = nix::unistd::getuid();
        let _ = std::fs::remove_file(format!("{dir}/tmux-{uid}/{}", self.socket));
    }
}

fn has_line(screen: &str, line: &str) -> bool {
    screen.lines().any(|l| l.trim_end() == line)
}

fn nexusctl(d: &TestDaemon) -> String {
    format!("{} --home {}", nexusctl_bin().display(), d.home().display())
}

fn running_vm(name: &str) -> TestDaemon {
    common::require_boot_prerequisites();
    let d = TestDaemon::start_with_storage();
    d.start_default_vm(name, &[]);
    d
}

#[test]
fn shell_in_tmux_runs_commands_resizes_detaches_reattaches_and_exits_with_the_code() {
    let d = running_vm("tty");
    let tmux = Tmux::start("shell", 80, 24);
    let ctl = nexusctl(&d);

    tmux.type_line(&format!("{ctl} vm shell tty; echo \"[exit=$?]\""));
    tmux.wait_for("the detach hint and the guest's prompt", |s| {
        s.contains("detach with ctrl-],d]") && s.lines().any(|l| l.trim_end().ends_with('#'))
    });
    tmux.type_line("echo $((6*7))");
    tmux.wait_for("42", |s| has_line(s, "42"));

    tmux.run(&["resize-window", "-t", "main", "-x", "100", "-y", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.type_line("stty size");
    tmux.wait_for("the new size in the guest", |s| has_line(s, "30 100"));

    tmux.type_line("KEPT=still-here-$((2+3))");
    tmux.keys(&["C-]"]);
    tmux.keys(&["d"]);
    tmux.wait_for("the detach", |s| {
        s.contains("detached from session") && has_line(s, "[exit=0]")
    });

    tmux.clear();
    tmux.type_line(&format!("{ctl} vm attach tty; echo \"[exit=$?]\""));
    tmux.wait_for("the earlier output replayed", |s| {
        s.contains("attached to session") && has_line(s, "42") && has_line(s, "30 100")
    });
    tmux.type_line("echo $KEPT");
    tmux.wait_for("the variable set before detaching", |s| {
        has_line(s, "still-here-5")
    });

    tmux.type_line("exit 3");
    tmux.wait_for("the CLI's exit code 3", |s| has_line(s, "[exit=3]"));
}

#[test]
fn vm_stop_ends_the_shell_with_a_clear_message() {
    let d = running_vm("ttystop");
    let tmux = Tmux::start("stop", 80, 24);
    let ctl = nexusctl(&d);
    tmux.type_line(&format!("{ctl} vm shell ttystop; echo \"[exit=$?]\""));
    tmux.wait_for("the prompt", |s| s.contains("detach with"));

    let out = d.ctl(&["vm", "stop", "ttystop"]);

    assert!(out.status.success(), "{}", common::stderr(&out));
    let screen = tmux.wait_for("the session to end", |s| has_line(s, "[exit=1]"));
    assert!(
        screen.contains("the VM ttystop is stopp"),
        "no clear message:\n{screen}"
    );
}

#[test]
fn shell_with_piped_stdin_points_to_vm_exec() {
    let d = TestDaemon::start();

    let out = d.ctl(&["vm", "shell", "nope"]);

    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("vm exec"), "{out:?}");
}

async fn open(d: &TestDaemon, vm: &str, open: TermOpen) -> Terminal {
    d.client.open_terminal(vm, &open).await.expect("terminal")
}

/// Reads events until `pred` holds for the output so far; returns that output.
async fn read_until(t: &mut Terminal, pred: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let read = async {
        while !pred(&text) {
            match t.next().await.expect("event") {
                Some(TermEvent::Output(b)) => text.push_str(&String::from_utf8_lossy(&b)),
                Some(TermEvent::Control(_)) => {}
                None => panic!("terminal closed; output so far:\n{text}"),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("timed out; output so far:\n{text}"));
    text
}

async fn session_id(t: &mut Terminal) -> String {
    match t.next().await.expect("event") {
        Some(TermEvent::Control(TermControl::Session { id, .. })) => id,
        other => panic!("first message is not the session: {other:?}"),
    }
}

#[test]
fn two_clients_share_a_session_that_is_listed_and_killed_by_id() {
    let d = running_vm("ttyws");
    rt().block_on(async {
        let size = TermOpen {
            cols: 80,
            rows: 24,
            argv: vec!["sh".into()],
            ..TermOpen::default()
        };
        let mut a = open(&d, "ttyws", size.clone()).await;
        let id = session_id(&mut a).await;
        let mut b = open(
            &d,
            "ttyws",
            TermOpen {
                session: Some(id.clone()),
                argv: vec![],
                ..size
            },
        )
        .await;
        assert_eq!(session_id(&mut b).await, id);

        b.send_input(b"echo from-$((1+1))-b\r").await.unwrap();
        read_until(&mut a, |s| s.contains("from-2-b")).await;
        let listed = d.client.terminal_sessions("ttyws").await.unwrap();
        assert!(
            listed.iter().any(|s| s.id == id && s.clients == 2),
            "{listed:?}"
        );
        let table = common::stdout(&d.ctl(&["vm", "sessions", "ttyws"]));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("running")),
            "{table}"
        );

        d.client.kill_terminal_session("ttyws", &id).await.unwrap();
        let end = tokio::time::timeout(WAIT, async {
            loop {
                match a.next().await.expect("event") {
                    Some(TermEvent::Control(c @ TermControl::Exit { .. })) => return c,
                    Some(_) => {}
                    None => panic!("closed without an exit"),
                }
            }
        })
        .await
        .expect("exit within the bound");
        assert_eq!(
            end,
            TermControl::Exit {
                code: None,
                signal: Some(9)
            }
        );
    });
}

#[test]
fn terminal_refuses_bad_sizes_and_unknown_sessions_before_upgrading() {
    let d = running_vm("ttybad");
    rt().block_on(async {
        let bad = d
            .client
            .send_raw(
                http::Method::GET,
                "/v1/vms/ttybad/terminal?cols=0&rows=24",
                None,
                None,
            )
            .await
            .unwrap();
        assert_eq!(bad.status(), 422);

        let unknown = TermOpen {
            session: Some("0123456789ab".into()),
            cols: 80,
            rows: 24,
            ..TermOpen::default()
        };
        let err = d
            .client
            .open_terminal("ttybad", &unknown)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.status(), Some(404), "{err}");
    });
}

#[test]
fn session_survives_a_daemon_restart_and_is_attached_again() {
    let d = running_vm("ttyrestart");
    let id = rt().block_on(async {
        let mut t = open(
            &d,
            "ttyrestart",
            TermOpen {
                cols: 80,
                rows: 24,
                ..TermOpen::default()
            },
        )
        .await;
        let id = session_id(&mut t).await;
        t.send_input(b"SURVIVED=yes-$((3*3))\r").await.unwrap();
        t.send_input(b"echo set\r").await.unwrap();
        read_until(&mut t, |s| s.contains("set\r\n")).await;
        id
    });

    let d = d.restart();

    rt().block_on(async {
        let again = TermOpen {
            session: Some(id),
            cols: 80,
            rows: 24,
            ..TermOpen::default()
        };
        let mut t = open(&d, "ttyrestart", again).await;
        t.send_input(b"echo $SURVIVED\r").await.unwrap();
        read_until(&mut t, |s| s.contains("yes-9")).await;
    });
}

#[test]
fn terminal_works_over_the_tcp_listener_with_the_token() {
    common::require_boot_prerequisites();
    let d = common::tcp_daemon(&["--pool-size", "1G"]);
    d.start_default_vm("ttytcp", &[]);
    let tcp = nexus_lib::client::Client::tcp(common::tcp_addr(&d), common::TCP_TOKEN);
    rt().block_on(async {
        let shell = TermOpen {
            cols: 80,
            rows: 24,
            ..TermOpen::default()
        };
        let mut t = tcp
            .open_terminal("ttytcp", &shell)
            .await
            .expect("terminal over TCP");
        session_id(&mut t).await;
        t.send_input(b"echo over-$((40+2))\r").await.unwrap();
        read_until(&mut t, |s| s.contains("over-42")).await;

        let wrong = nexus_lib::client::Client::tcp(common::tcp_addr(&d), "wrong-token");
        let err = wrong
            .open_terminal("ttytcp", &shell)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.status(), Some(401), "{err}");
    });
}

#[test]
fn shell_with_a_command_runs_it_on_a_terminal_and_exits_with_its_code() {
    let d = running_vm("ttycmd");
    let tmux = Tmux::start("cmd", 80, 24);
    let ctl = nexusctl(&d);

    tmux.type_line(&format!(
        "{ctl} vm shell ttycmd -- sh -c 'tty; echo cmd-$((2+2)); exit 5'; echo \"[exit=$?]\""
    ));

    let screen = tmux.wait_for("the command's exit", |s| has_line(s, "[exit=5]"));
    assert!(has_line(&screen, "cmd-4"), "{screen}");
    assert!(screen.contains("/dev/pts/"), "not on a terminal:\n{screen}");
}
