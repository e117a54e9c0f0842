// The VM list (state, size, last boot's phases), start/stop, and a detail pane with the
// console and a terminal. Everything comes from the API on this origin; the session cookie
// authenticates on TCP. The selected VM and tab live in the URL hash, so a reload comes back
// to them (and the terminal re-attaches: terminal.js).
import { openTerminal } from "./terminal.js";

const $ = (sel) => document.querySelector(sel);
const REFRESH_MS = 3000;
const CONSOLE_REFRESH_MS = 2000;

let selected = null; // { name, tab }
let terminal = null; // what openTerminal returned
let consoleTimer = null;
let busy = new Set(); // VMs with a start or stop in flight

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function api(path, opts = {}) {
  const resp = await fetch(path, { credentials: "same-origin", ...opts });
  if (resp.status === 401) {
    location.assign("/ui/login");
    throw new Error("not logged in");
  }
  if (!resp.ok) {
    let msg = `${resp.status}`;
    try { msg = (await resp.json()).error.message; } catch { /* not JSON */ }
    throw new Error(msg);
  }
  return resp;
}

const enc = encodeURIComponent;

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  const name = h.get("vm");
  return name ? { name, tab: h.get("tab") === "console" ? "console" : "terminal" } : null;
}

function writeHash() {
  const h = selected ? `#vm=${enc(selected.name)}&tab=${selected.tab}` : "";
  history.replaceState(null, "", location.pathname + h);
}

// The last boot's phases as a bar: VMM up, kernel (guest clock to init), agent start (init to
// listening), handshake (the rest of spawn → agent ready). Scaled to the slowest VM shown.
function bootBar(boot, scale) {
  const wrap = el("div", { class: "boot" });
  if (!boot || boot.agent_ready_ms == null) {
    wrap.append(el("span", { class: "muted" }, boot ? boot.outcome : "never booted"));
    return wrap;
  }
  const total = boot.agent_ready_ms;
  const vmm = boot.vmm_ready_ms ?? 0;
  const kernel = boot.guest_init_ms ?? 0;
  const init = Math.max(0, (boot.guest_ready_ms ?? kernel) - kernel);
  const handshake = Math.max(0, total - vmm - kernel - init);
  const bar = el("div", { class: "bar", title: `${boot.backend}/${boot.accel}, started ${boot.started_at}` });
  for (const [cls, ms, label] of [["vmm", vmm, "VMM up"], ["kernel", kernel, "kernel"],
    ["init", init, "agent start"], ["handshake", handshake, "handshake"]]) {
    const seg = el("span", { class: `seg ${cls}`, title: `${label}: ${ms} ms` });
    seg.style.width = `${(100 * ms) / scale}%`;
    bar.append(seg);
  }
  wrap.append(bar, el("span", { class: "ms" }, `${total} ms`));
  return wrap;
}

async function lastBoot(vm) {
  try {
    const boots = await (await api(`/v1/vms/${enc(vm.name)}/boots`)).json();
    return boots.length ? boots[boots.length - 1] : null;
  } catch {
    return null;
  }
}

async function action(vm, verb) {
  busy.add(vm.name);
  $("#status").textContent = `${verb === "start" ? "starting" : "stopping"} ${vm.name}…`;
  refresh();
  try {
    await api(`/v1/vms/${enc(vm.name)}/${verb}`, { method: "POST" });
    $("#status").textContent = "";
  } catch (e) {
    $("#status").textContent = `${vm.name}: ${e.message}`;
  } finally {
    busy.delete(vm.name);
    refresh();
  }
}

function select(name, tab) {
  selected = { name, tab };
  writeHash();
  show();
  refresh();
}

async function refresh() {
  let vms;
  try {
    vms = await (await api("/v1/vms")).json();
  } catch (e) {
    $("#status").textContent = e.message;
    return;
  }
  const boots = await Promise.all(vms.map(lastBoot));
  const scale = Math.max(1, ...boots.map((b) => b?.agent_ready_ms ?? 0));
  const rows = vms.map((vm, i) => {
    const running = vm.state === "running";
    const live = ["running", "starting", "stopping"].includes(vm.state);
    const inFlight = busy.has(vm.name);
    const tr = el("tr", { "data-vm": vm.name, class: selected?.name === vm.name ? "selected" : "" },
      el("td", {}, el("a", { href: `#vm=${enc(vm.name)}&tab=terminal`, class: "name",
        onclick: (ev) => { ev.preventDefault(); select(vm.name, selected?.tab ?? "terminal"); } }, vm.name)),
      el("td", {}, el("span", { class: `state ${vm.state}` }, vm.state)),
      el("td", { class: "muted" }, `${vm.vcpus} vCPU · ${vm.memory_mib} MiB`),
      el("td", {}, bootBar(boots[i], scale)),
      el("td", { class: "actions" },
        el("button", { type: "button", onclick: () => action(vm, "start"), ...(live || inFlight ? { disabled: "" } : {}) }, "Start"),
        el("button", { type: "button", onclick: () => action(vm, "stop"), ...(!running || inFlight ? { disabled: "" } : {}) }, "Stop"),
        el("button", { type: "button", class: "open-terminal", onclick: () => select(vm.name, "terminal") }, "Terminal"),
        el("button", { type: "button", onclick: () => select(vm.name, "console") }, "Console")));
    return tr;
  });
  $("#vms tbody").replaceChildren(...rows);
  $("#empty").hidden = vms.length > 0;
  if (selected && !vms.some((v) => v.name === selected.name)) {
    selected = null;
    writeHash();
    show();
  }
}

// Shows the detail pane of the selected VM and tab.
function show() {
  $("#detail").hidden = !selected;
  clearInterval(consoleTimer);
  consoleTimer = null;
  if (!selected) {
    terminal?.close();
    terminal = null;
    return;
  }
  $("#detail-name").textContent = selected.name;
  for (const b of document.querySelectorAll(".tabs [data-tab]")) {
    b.classList.toggle("active", b.dataset.tab === selected.tab);
  }
  $("#terminal-pane").hidden = selected.tab !== "terminal";
  $("#console-pane").hidden = selected.tab !== "console";
  $("#new-session").hidden = selected.tab !== "terminal";
  if (selected.tab === "terminal") {
    if (!terminal || terminal.vm !== selected.name) {
      terminal?.close();
      terminal = openTerminal(selected.name, $("#terminal"), {
        note: (text) => { $("#terminal-note").textContent = text; $("#terminal-note").hidden = !text; },
        session: (id) => { $("#session").textContent = id ? `session ${id}` : ""; },
      });
    } else {
      terminal.fit();
    }
  } else {
    followConsole(selected.name);
  }
}

// The last 200 lines, then whatever follows, while the console tab is shown.
function followConsole(name) {
  const pre = $("#console-pane");
  pre.textContent = "";
  let offset = null;
  const poll = async () => {
    try {
      const q = offset == null ? "tail=200" : `offset=${offset}`;
      const resp = await api(`/v1/vms/${enc(name)}/console?${q}`);
      const text = await resp.text();
      offset = Number(resp.headers.get("x-console-offset") ?? 0);
      if (text) {
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = (pre.textContent + text).slice(-200000);
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }
    } catch (e) {
      $("#status").textContent = e.message;
    }
  };
  poll();
  consoleTimer = setInterval(poll, CONSOLE_REFRESH_MS);
}

function init() {
  for (const b of document.querySelectorAll(".tabs [data-tab]")) {
    b.addEventListener("click", () => select(selected.name, b.dataset.tab));
  }
  $("#new-session").addEventListener("click", () => terminal?.restart());
  window.addEventListener("resize", () => terminal?.fit());
  selected = readHash();
  show();
  refresh();
  setInterval(refresh, REFRESH_MS);
}

init();
