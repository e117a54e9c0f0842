//! Per-VM MCP servers seen from the host: for each server a running VM declares, a keeper task
//! asks the VM's agent to run it, opens a byte stream to it through the agent, speaks MCP to it
//! as a client (rmcp) and records the tools it lists (see `guest_names.rs` for what is accepted).
//! `/mcp` shows those tools and forwards calls to them. When a connection ends (the server
//! crashed, the VM stopped) its tools are dropped at once and the keeper tries again with
//! back-off (1 s doubling to 30 s). Every change of the tool set is announced to the open MCP
//! sessions with `notifications/tools/list_changed`.
//!
//! The guest is untrusted: a message larger than [`MAX_MESSAGE_BYTES`] is dropped by the
//! transport, the handshake and the listing each have [`SETUP_TIMEOUT`], a call has
//! [`CALL_TIMEOUT`], and only the first page of a tool listing is read. The reconciler looks at
//! the database every [`RECONCILE_EVERY`] for running VMs that declare servers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use nexus_lib::agent::McpServerSpec;
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::{NotificationContext, Peer, RoleClient, RoleServer, ServiceExt};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, ServiceError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::guest_names::{GuestTool, admit};
use crate::store::Store;
use crate::tokens::Scope;
use crate::vm::lifecycle::Lifecycle;

/// Largest JSON-RPC message a per-VM server may send (bigger ones are dropped).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Time a server has to answer the handshake, and then the tool listing.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a forwarded tool call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the reconciler compares the running VMs with the keepers.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A server: its VM and its name.
type Key = (Uuid, String);

/// The connected per-VM servers and the MCP sessions to tell about changes; cheap to clone.
#[derive(Clone, Default)]
pub struct GuestServers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GuestServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestServers")
            .field("connected", &self.connected().len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    connected: Mutex<HashMap<Key, Connected>>,
    sessions: Mutex<Vec<Peer<RoleServer>>>,
}

struct Connected {
    /// Distinguishes this connection from a later one of the same server.
    serial: u64,
    peer: Peer<RoleClient>,
    tools: Vec<GuestTool>,
}

/// Where a tool call goes.
pub struct Route {
    pub vm: Uuid,
    pub peer: Peer<RoleClient>,
    pub tool: String,
}

/// Why a forwarded call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the MCP server did not answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("the MCP server in the VM failed the call: {0}")]
    Service(#[from] ServiceError),
}

impl GuestServers {
    fn connected(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Connected>> {
        self.inner
            .connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The per-VM tools `scope` may see, sorted by name.
    pub fn tools(&self, scope: &Scope) -> Vec<Tool> {
        let mut tools: Vec<Tool> = self
            .connected()
            .iter()
            .filter(|((vm, _), _)| scope.sees(*vm))
            .flat_map(|(_, c)| c.tools.iter().map(|t| t.exposed.clone()))
            .collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        tools
    }

    /// The server and tool behind the `/mcp` name `name`, if one is connected.
    pub fn route(&self, name: &str) -> Option<Route> {
        self.connected().iter().find_map(|((vm, _), c)| {
            c.tools
                .iter()
                .find(|t| t.exposed.name == name)
                .map(|t| Route {
                    vm: *vm,
                    peer: c.peer.clone(),
                    tool: t.original.clone(),
                })
        })
    }

    /// Forwards a call to the server behind `route` (only the arguments: the client's `_meta`
    /// is the host session's business).
    pub async fn call(
        route: Route,
        arguments: Option<rmcp::model::JsonObject>,
    ) -> Result<CallToolResult, CallError> {
        let mut params = CallToolRequestParams::new(route.tool);
        params.arguments = arguments;
        tokio::time::timeout(CALL_TIMEOUT, route.peer.call_tool(params))
            .await
            .map_err(|_| CallError::Timeout)?
            .map_err(CallError::from)
    }

    /// The MCP sessions still open (closed ones are forgotten).
    fn open_sessions(&self) -> std::sync::MutexGuard<'_, Vec<Peer<RoleServer>>> {
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        sessions.retain(|p| !p.is_transport_closed());
        sessions
    }

    /// Remembers an MCP session (one that sent `initialize`) to tell it when tools change.
    pub fn add_session(&self, peer: Peer<RoleServer>) {
        self.open_sessions().push(peer);
    }

    /// Sends `notifications/tools/list_changed` to every open session. Every session is told,
    /// whatever its scope: the notification carries nothing but the fact, and a token's scope can
    /// grow during its session (a VM it creates).
    fn announce(&self) {
        let sessions: Vec<Peer<RoleServer>> = self.open_sessions().clone();
        for peer in sessions {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(SETUP_TIMEOUT, peer.notify_tool_list_changed()).await;
            });
        }
    }

    fn insert(&self, key: Key, connected: Connected) {
        self.connected().insert(key, connected);
        self.announce();
    }

    /// Drops the tools of connection `serial` of `key`, if it is still the current one.
    fn remove(&self, key: &Key, serial: u64) {
        let removed = {
            let mut map = self.connected();
            match map.get(key) {
                Some(c) if c.serial == serial => map.remove(key).is_some(),
                _ => false,
            }
        };
        if removed {
            self.announce();
        }
    }

    /// Keeps one keeper per server of each running VM until `shutdown`.
    pub async fn run(self, store: Store, lifecycle: Lifecycle, shutdown: CancellationToken) {
        let mut keepers: HashMap<Key, CancellationToken> = HashMap::new();
        loop {
            match store.call(|c| crate::store::mcp_servers::running(c)).await {
                Ok(running) => {
                    let mut wanted: HashMap<Key, (String, Vec<McpServerSpec>)> = HashMap::new();
                    for (vm, vm_name, specs) in running {
                        for spec in &specs {
                            wanted
                                .insert((vm, spec.name.clone()), (vm_name.clone(), specs.clone()));
                        }
                    }
                    keepers.retain(|key, stop| {
                        let keep = wanted.contains_key(key) && !stop.is_cancelled();
                        if !keep {
                            stop.cancel();
                        }
                        keep
                    });
                    for (key, (vm_name, specs)) in wanted {
                        if keepers.contains_key(&key) {
                            continue;
                        }
                        let stop = shutdown.child_token();
                        keepers.insert(key.clone(), stop.clone());
                        let keeper = Keeper {
                            servers: self.clone(),
                            lifecycle: lifecycle.clone(),
                            key,
                            vm_name,
                            specs,
                        };
                        tokio::spawn(keeper.run(stop));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing the VMs' MCP servers failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
                () = shutdown.cancelled() => break,
            }
        }
        for stop in keepers.values() {
            stop.cancel();
        }
    }
}

/// Keeps one server of one running VM connected.
struct Keeper {
    servers: GuestServers,
    lifecycle: Lifecycle,
    key: Key,
    vm_name: String,
    /// All servers of the VM: what the agent is told to run.
    specs: Vec<McpServerSpec>,
}

impl Keeper {
    async fn run(self, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        let mut serial = 0u64;
        while !stop.is_cancelled() {
            serial += 1;
            let attempt = tokio::select! {
                attempt = self.connect() => attempt,
                () = stop.cancelled() => break,
            };
            match attempt {
                Ok((service, tools, mut relist)) => {
                    backoff = FIRST_BACKOFF;
                    let peer = service.peer().clone();
                    self.servers.insert(
                        self.key.clone(),
                        Connected {
                            serial,
                            peer: peer.clone(),
                            tools,
                        },
                    );
                    let cancel = service.cancellation_token();
                    let mut ended = std::pin::pin!(service.waiting());
                    loop {
                        tokio::select! {
                            _ = &mut ended => break,
                            () = stop.cancelled() => {
                                cancel.cancel();
                                break;
                            }
                            Some(()) = relist.recv() => self.relist(&peer, serial).await,
                        }
                    }
                    self.servers.remove(&self.key, serial);
                    tracing::info!(vm = %self.vm_name, server = %self.key.1, "per-VM MCP server disconnected");
                }
                Err(e) => {
                    tracing::debug!(vm = %self.vm_name, server = %self.key.1, error = %e, "per-VM MCP server not reachable");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects to the server through the VM's agent and lists its tools.
    async fn connect(
        &self,
    ) -> Result<
        (
            rmcp::service::RunningService<RoleClient, GuestClient>,
            Vec<GuestTool>,
            mpsc::Receiver<()>,
        ),
        String,
    > {
        let (_, agent) = self
            .lifecycle
            .agent(&self.key.0.to_string())
            .await
            .map_err(|e| e.to_string())?;
        agent
            .set_mcp_servers(&self.specs)
            .await
            .map_err(|e| e.to_string())?;
        let (input, output) = agent
            .mcp_connect(&self.key.1)
            .await
            .map_err(|e| e.to_string())?;
        let (read, write) = tokio::io::split(byte_pipe(input, output));
        let transport =
            AsyncRwTransport::new_client(read, write).with_max_line_length(MAX_MESSAGE_BYTES);
        let (tx, relist) = mpsc::channel(1);
        let service = tokio::time::timeout(SETUP_TIMEOUT, GuestClient(tx).serve(transport))
            .await
            .map_err(|_| "no answer to initialize".to_string())?
            .map_err(|e| e.to_string())?;
        let tools = self.list(service.peer()).await?;
        tracing::info!(vm = %self.vm_name, server = %self.key.1, tools = tools.len(), "per-VM MCP server connected");
        Ok((service, tools, relist))
    }

    async fn list(&self, peer: &Peer<RoleClient>) -> Result<Vec<GuestTool>, String> {
        let listed = tokio::time::timeout(SETUP_TIMEOUT, peer.list_tools(None))
            .await
            .map_err(|_| "no answer to tools/list".to_string())?
            .map_err(|e| e.to_string())?;
        let (tools, left_out) = admit(&self.vm_name, &self.key.1, listed.tools);
        if left_out > 0 {
            tracing::warn!(vm = %self.vm_name, server = %self.key.1, left_out, "per-VM MCP server reported tools that are not exposed (bad or repeated names, too many, schemas too large)");
        }
        Ok(tools)
    }

    /// The server said its tools changed: list them again.
    async fn relist(&self, peer: &Peer<RoleClient>, serial: u64) {
        let Ok(tools) = self.list(peer).await else {
            return;
        };
        let mut map = self.servers.connected();
        if let Some(c) = map.get_mut(&self.key).filter(|c| c.serial == serial) {
            c.tools = tools;
            drop(map);
            self.servers.announce();
        }
    }
}

/// The MCP client nexusd runs against a per-VM server: rmcp's defaults, plus noticing that the
/// server's tools changed (at most one pending re-listing, however often the guest says so).
struct GuestClient(mpsc::Sender<()>);

impl ClientHandler for GuestClient {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.0.try_send(());
    }
}

/// Joins the two halves of an agent byte stream into one reader and writer for the transport.
fn byte_pipe(
    input: mpsc::Sender<Bytes>,
    mut output: crate::agent::ByteStream,
) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut from_transport, mut to_transport) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(Ok(chunk)) = output.next().await {
            if to_transport.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_transport.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_transport.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if input.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    ours
}
