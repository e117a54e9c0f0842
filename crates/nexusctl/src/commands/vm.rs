//! `nexusctl vm <verb>`.

use nexus_lib::agent::McpServerSpec;
use nexus_lib::api::{BootRecord, CreateVm, Vm};
use nexus_lib::client::{Client, ClientError};

use crate::cli::{VmCommand, VmCreateArgs};
use crate::output::{Printer, fields, table};

/// Runs a `vm` verb; returns the process exit code.
pub async fn run(client: &Client, out: Printer, cmd: VmCommand) -> Result<u8, ClientError> {
    match cmd {
        VmCommand::Exec(args) => return super::guest::exec(client, args).await,
        VmCommand::Shell(args) => return super::terminal::shell(client, args).await,
        VmCommand::Attach(args) => return super::terminal::attach(client, args).await,
        VmCommand::Sessions(r) => super::terminal::sessions(client, out, &r.vm).await?,
        VmCommand::KillSession(args) => {
            client
                .kill_terminal_session(&args.vm, &args.session)
                .await?;
            out.print(&serde_json::json!({"killed": args.session}), || {
                format!("killed session {}", args.session)
            });
        }
        VmCommand::Cp(args) => super::guest::cp(client, args).await?,
        VmCommand::Logs(args) => super::guest::logs(client, args).await?,
        VmCommand::Start(r) => action(client, out, &r.vm, "start").await?,
        VmCommand::Stop(r) => action(client, out, &r.vm, "stop").await?,
        VmCommand::Restart(r) => action(client, out, &r.vm, "restart").await?,
        VmCommand::Network(args) => super::network::vm_network(client, out, args).await?,
        other => records(client, out, other).await?,
    }
    Ok(0)
}

async fn action(client: &Client, out: Printer, vm: &str, verb: &str) -> Result<(), ClientError> {
    let vm = client.vm_action(vm, verb).await?;
    let boot = client.vm_boots(&vm.id.to_string()).await?.pop();
    out.print(&vm, || show(&vm, boot.as_ref()));
    Ok(())
}

async fn records(client: &Client, out: Printer, cmd: VmCommand) -> Result<(), ClientError> {
    match cmd {
        VmCommand::Create(args) => create(client, out, args).await,
        VmCommand::List(args) => {
            let vms = client.list_vms(args.state).await?;
            out.print(&vms, || list_table(&vms));
            Ok(())
        }
        VmCommand::Show(r) => {
            let vm = client.get_vm(&r.vm).await?;
            let boot = client.vm_boots(&vm.id.to_string()).await?.pop();
            out.print(&vm, || show(&vm, boot.as_ref()));
            Ok(())
        }
        VmCommand::Delete(r) => {
            client.delete_vm(&r.vm, r.keep_drives).await?;
            out.print(&serde_json::json!({"deleted": r.vm}), || {
                format!("deleted {}", r.vm)
            });
            Ok(())
        }
        VmCommand::History(r) => {
            let h = client.vm_history(&r.vm).await?;
            out.print(&h, || {
                let rows: Vec<Vec<String>> = h
                    .iter()
                    .map(|t| {
                        vec![
                            t.at.clone(),
                            t.from.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                            t.to.to_string(),
                            t.reason.clone(),
                        ]
                    })
                    .collect();
                table(&["AT", "FROM", "TO", "REASON"], &rows)
            });
            Ok(())
        }
        _ => unreachable!("handled by run"),
    }
}

async fn create(client: &Client, out: Printer, args: VmCreateArgs) -> Result<(), ClientError> {
    let mut mcp_servers: Vec<McpServerSpec> = args
        .mcp_servers
        .into_iter()
        .map(|(name, command)| McpServerSpec {
            name,
            argv: vec!["/bin/sh".into(), "-c".into(), command],
            env: Default::default(),
        })
        .collect();
    for (name, key, value) in args.mcp_env {
        match mcp_servers.iter_mut().find(|s| s.name == name) {
            Some(server) => {
                server.env.insert(key, value);
            }
            None => {
                return Err(super::guest::usage(format!(
                    "--mcp-env names {name}, which no --mcp-server declares"
                )));
            }
        }
    }
    let (image, start) = match &args.template {
        Some(template) => {
            // Builds if needed (a cache hit otherwise), then boots the VM from the image.
            let started = client.start_build(template, false).await?;
            let b = super::build::wait(client, started, false, out.json).await?;
            if !super::build::succeeded(&b) {
                return Err(super::build::failed(&b));
            }
            (b.image_id.map(|i| i.to_string()), true)
        }
        None => (args.image, args.start),
    };
    if args.disk_size.is_some() && image.is_none() {
        return Err(super::guest::usage(
            "--disk-size needs --image or --template".into(),
        ));
    }
    let vm = client
        .create_vm(&CreateVm {
            name: args.name,
            vcpus: args.vcpus,
            memory_mib: args.memory,
            start,
            image,
            disk_size: args.disk_size,
            network: args.network,
            publish: args.publish,
            egress: args.egress.policy(),
            mcp_servers,
        })
        .await?;
    let boot = client.vm_boots(&vm.id.to_string()).await?.pop();
    out.print(&vm, || show(&vm, boot.as_ref()));
    Ok(())
}

fn list_table(vms: &[Vm]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.state.to_string(),
                v.vcpus.to_string(),
                format!("{} MiB", v.memory_mib),
                v.vsock_cid.to_string(),
                v.network
                    .as_ref()
                    .and_then(|n| n.ip)
                    .map_or("-".to_owned(), |ip| ip.to_string()),
                v.id.to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "STATE", "VCPUS", "MEMORY", "CID", "IP", "ID"],
        &rows,
    )
}

fn show(vm: &Vm, boot: Option<&BootRecord>) -> String {
    let mut text = fields(&[
        ("name", vm.name.clone()),
        ("id", vm.id.to_string()),
        (
            "state",
            format!("{} (since {})", vm.state, vm.state_changed_at),
        ),
        ("vcpus", vm.vcpus.to_string()),
        ("memory", format!("{} MiB", vm.memory_mib)),
        ("vsock cid", vm.vsock_cid.to_string()),
        ("created", vm.created_at.clone()),
    ]);
    if let Some(net) = &vm.network {
        text += &super::network::vm_network_fields(net);
    }
    if !vm.mcp_servers.is_empty() {
        text += &fields(&[("mcp servers", vm.mcp_servers.join(", "))]);
    }
    if let Some(b) = boot {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        text += &fields(&[
            (
                "last boot",
                format!(
                    "{} on {}/{} ({})",
                    b.started_at, b.backend, b.accel, b.outcome
                ),
            ),
            ("  vmm ready", ms(b.vmm_ready_ms)),
            ("  guest init", ms(b.guest_init_ms)),
            ("  guest agent up", ms(b.guest_ready_ms)),
            ("  agent handshake", ms(b.agent_ready_ms)),
        ]);
        if let Some(exit) = &b.exit {
            text += &fields(&[(
                "  ended",
                format!("{} ({exit})", b.ended_at.as_deref().unwrap_or("-")),
            )]);
        }
    }
    text
}
