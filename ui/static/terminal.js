// A terminal on a guest PTY session: xterm.js on the terminal WebSocket
// (`/v1/vms/{vm}/terminal`: binary messages are terminal bytes, text messages JSON control).
// The session id is kept per VM in sessionStorage, so after a reload the tab attaches to the
// same session and the agent replays its scrollback; a session that is gone is forgotten and
// a new one opened.

const KEY = (vm) => `nexus.session.${vm}`;
const MISSING = "The terminal assets were not installed: run `npm ci --prefix ui` " +
  "(scripts/setup.sh does it), then rebuild nexusd (cargo build).";

let xterm = null; // the loaded modules, or the reason they are missing

async function loadXterm() {
  if (!xterm) {
    xterm = Promise.all([import("./xterm.mjs"), import("./addon-fit.mjs")])
      .then(([x, f]) => ({ Terminal: x.Terminal, FitAddon: f.FitAddon }))
      .catch(() => null);
  }
  return xterm;
}

export function openTerminal(vm, container, { note, session }) {
  let term = null;
  let fit = null;
  let ws = null;
  let closed = false;
  let input = null;
  let resize = null;

  const handle = {
    vm,
    fit: () => { if (fit) { try { fit.fit(); } catch { /* hidden */ } } },
    close: () => { closed = true; ws?.close(); input?.dispose(); resize?.dispose(); term?.dispose(); },
    restart: () => { sessionStorage.removeItem(KEY(vm)); term?.reset(); connect(); },
  };

  function connect() {
    ws?.close();
    const stored = sessionStorage.getItem(KEY(vm));
    const q = new URLSearchParams({ cols: term.cols, rows: term.rows });
    if (stored) q.set("session", stored);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const sock = new WebSocket(`${scheme}//${location.host}/v1/vms/${encodeURIComponent(vm)}/terminal?${q}`);
    sock.binaryType = "arraybuffer";
    ws = sock;
    let opened = false;
    let ended = false;
    note(stored ? `attaching to session ${stored}…` : "opening a shell…");
    sock.onmessage = (ev) => {
      if (typeof ev.data !== "string") {
        term.write(new Uint8Array(ev.data));
        return;
      }
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.type === "session") {
        opened = true;
        sessionStorage.setItem(KEY(vm), msg.id);
        session(msg.id);
        note("");
        term.focus();
      } else if (msg.type === "exit") {
        ended = true;
        sessionStorage.removeItem(KEY(vm));
        session("");
        const how = msg.signal != null ? `signal ${msg.signal}` : `code ${msg.code}`;
        note(`The session ended (${how}). "New session" opens another.`);
      } else if (msg.type === "closed") {
        ended = true;
        note(`The terminal closed: ${msg.reason}`);
      }
    };
    sock.onclose = () => {
      if (ws !== sock || closed || ended) return;
      if (!opened && stored) {
        // The stored session is gone (exited, killed, or the VM restarted): start afresh.
        sessionStorage.removeItem(KEY(vm));
        connect();
      } else if (!opened) {
        note("Could not open a terminal: is the VM running?");
      } else {
        note("Disconnected. The session keeps running: reload or pick the VM again to re-attach.");
      }
    };
  }

  loadXterm().then((mods) => {
    if (closed) return;
    if (!mods) {
      note(MISSING);
      return;
    }
    container.replaceChildren();
    term = new mods.Terminal({
      cursorBlink: true,
      fontSize: 14,
      scrollback: 5000,
      theme: { background: "#0f1419", foreground: "#d8dee9" },
    });
    fit = new mods.FitAddon();
    term.loadAddon(fit);
    term.open(container);
    handle.fit();
    const encoder = new TextEncoder();
    input = term.onData((data) => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
    });
    resize = term.onResize(({ cols, rows }) => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols, rows }));
    });
    connect();
  });
  return handle;
}
