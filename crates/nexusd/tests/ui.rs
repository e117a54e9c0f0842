//! The web UI in headless Chromium (Debian's `chromium`, driven over the DevTools protocol by
//! `ui/cdp.rs`) against a real nexusd with its TCP listener and a real VM under QEMU: log in
//! with the token, see the VM list, open the VM's terminal, type a command and see its output,
//! reload and find the same session re-attached with its earlier output. A screenshot goes to
//! `target/test-output/ui/<test>.png`.
//!
//! Needs what VM tests need (see vm_boot.rs) plus chromium, and the xterm.js assets embedded
//! (`npm ci --prefix ui` before building nexusd; scripts/setup.sh does it).

#[path = "ui/cdp.rs"]
mod cdp;
mod common;

use std::path::PathBuf;

use cdp::Browser;
use common::{TCP_TOKEN, rt, tcp_addr, tcp_daemon};

/// The text of the terminal's rows as rendered (xterm's DOM renderer).
const TERMINAL_TEXT: &str = "document.querySelector('#terminal .xterm-rows')?.innerText ?? ''";

/// Where a test's screenshot goes.
fn screenshot_path(test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("test-output/ui").join(format!("{test}.png"))
}

/// Whether the terminal shows a line that is exactly `line` (trailing blanks aside).
fn has_line(screen: &str, line: &str) -> bool {
    screen.lines().any(|l| l.trim_end() == line)
}

#[test]
fn browser_logs_in_opens_a_terminal_runs_a_command_and_reattaches_after_reload() {
    common::require_boot_prerequisites();
    let d = tcp_daemon(&["--pool-size", "1G"]);
    d.start_default_vm("webvm", &[]);
    let base = format!("http://{}", tcp_addr(&d));
    let shot = screenshot_path("browser_terminal");

    rt().block_on(async {
        let mut b = Browser::launch(1280, 860).await;

        // Not logged in: the UI sends the browser to the login page.
        b.navigate(&format!("{base}/ui/")).await;
        b.wait_for("the login page", "location.pathname === '/ui/login'", "location.href")
            .await;
        b.eval("document.querySelector('#token').focus()").await;
        b.type_text(TCP_TOKEN).await;
        b.eval("document.querySelector('form button').click()").await;

        // The VM list shows the running VM with its last boot drawn.
        b.wait_for(
            "the VM list with webvm running",
            "document.querySelector('tr[data-vm=\"webvm\"] .state')?.textContent === 'running'",
            "document.body.innerText",
        )
        .await;
        b.wait_for(
            "the boot bar",
            "document.querySelectorAll('tr[data-vm=\"webvm\"] .bar .seg').length === 4",
            "document.querySelector('#vms').innerText",
        )
        .await;

        // Its terminal: a shell, a command typed, its output seen.
        b.eval("document.querySelector('tr[data-vm=\"webvm\"] .open-terminal').click()")
            .await;
        let session = b
            .wait_for(
                "a terminal session",
                "(document.querySelector('#session').textContent.match(/session (\\w+)/) || [])[1] || ''",
                &format!("document.body.innerText + '\\n' + {TERMINAL_TEXT}"),
            )
            .await;
        b.wait_for("the prompt", &format!("/[#$] *$/m.test({TERMINAL_TEXT})"), TERMINAL_TEXT)
            .await;
        b.type_text("echo $((6*7))").await;
        b.enter().await;
        let screen = b
            .wait_for(
                "42 in the terminal",
                &format!("/^42\\s*$/m.test({TERMINAL_TEXT}) ? {TERMINAL_TEXT} : ''"),
                TERMINAL_TEXT,
            )
            .await;
        assert!(has_line(screen.as_str().unwrap(), "42"), "{screen}");

        // A reload comes back to the same session, its earlier output replayed, still live.
        b.reload().await;
        let again = b
            .wait_for(
                "the re-attached session",
                "(document.querySelector('#session').textContent.match(/session (\\w+)/) || [])[1] || ''",
                &format!("document.body.innerText + '\\n' + {TERMINAL_TEXT}"),
            )
            .await;
        assert_eq!(again, session, "a reload opened another session");
        b.wait_for(
            "the replayed output",
            &format!("/^42\\s*$/m.test({TERMINAL_TEXT})"),
            TERMINAL_TEXT,
        )
        .await;
        b.type_text("echo again-$((40+2))").await;
        b.enter().await;
        b.wait_for(
            "the re-attached shell's answer",
            &format!("/^again-42\\s*$/m.test({TERMINAL_TEXT})"),
            TERMINAL_TEXT,
        )
        .await;

        b.screenshot(&shot).await;
        println!("screenshot: {}", shot.display());
        let problems = b.problems();
        assert!(problems.is_empty(), "the page reported errors: {problems:#?}");
    });
}
