//! `nexusctl vm <verb>`.

use nexus_lib::api::{CreateVm, Vm};
use nexus_lib::client::{Client, ClientError};

use crate::cli::{VmCommand, VmCreateArgs};
use crate::output::{Printer, fields, table};

pub async fn run(client: &Client, out: Printer, cmd: VmCommand) -> Result<(), ClientError> {
    match cmd {
        VmCommand::Create(args) => create(client, out, args).await,
        VmCommand::List(args) => {
            let vms = client.list_vms(args.state).await?;
            out.print(&vms, || list_table(&vms));
            Ok(())
        }
        VmCommand::Show(r) => {
            let vm = client.get_vm(&r.vm).await?;
            out.print(&vm, || show(&vm));
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
    }
}

async fn create(client: &Client, out: Printer, args: VmCreateArgs) -> Result<(), ClientError> {
    let vm = client
        .create_vm(&CreateVm {
            name: args.name,
            vcpus: args.vcpus,
            memory_mib: args.memory,
            image: args.image,
            disk_size: args.disk_size,
        })
        .await?;
    out.print(&vm, || show(&vm));
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
                v.id.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "STATE", "VCPUS", "MEMORY", "CID", "ID"], &rows)
}

fn show(vm: &Vm) -> String {
    fields(&[
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
    ])
}
