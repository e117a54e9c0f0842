//! `nexusctl drive <verb>`.

use nexus_lib::api::{AttachDrive, CreateDrive, Drive};
use nexus_lib::client::{Client, ClientError};
use nexus_lib::size::format_size;

use crate::cli::DriveCommand;
use crate::output::{Printer, fields, table};

pub async fn run(client: &Client, out: Printer, cmd: DriveCommand) -> Result<(), ClientError> {
    let drive = match cmd {
        DriveCommand::Create(args) => {
            client
                .create_drive(&CreateDrive {
                    image: args.image,
                    name: args.name,
                    size: args.size,
                })
                .await?
        }
        DriveCommand::List => {
            let drives = client.list_drives().await?;
            out.print(&drives, || {
                let rows: Vec<Vec<String>> = drives
                    .iter()
                    .map(|d| {
                        vec![
                            d.name.clone(),
                            d.state.to_string(),
                            format_size(d.size_bytes),
                            attachment(d),
                            d.id.to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "STATE", "SIZE", "VM", "ID"], &rows)
            });
            return Ok(());
        }
        DriveCommand::Show(r) => client.get_drive(&r.drive).await?,
        DriveCommand::Delete(r) => {
            client.delete_drive(&r.drive).await?;
            out.print(&serde_json::json!({"deleted": r.drive}), || {
                format!("deleted {}", r.drive)
            });
            return Ok(());
        }
        DriveCommand::Attach(args) => {
            client
                .attach_drive(
                    &args.drive,
                    &AttachDrive {
                        vm: args.vm,
                        root: args.root,
                    },
                )
                .await?
        }
        DriveCommand::Detach(r) => client.detach_drive(&r.drive).await?,
    };
    out.print(&drive, || show(&drive));
    Ok(())
}

/// `<vm id> (root)`, or `-` when detached.
fn attachment(d: &Drive) -> String {
    match d.vm_id {
        Some(vm) if d.is_root => format!("{vm} (root)"),
        Some(vm) => vm.to_string(),
        None => "-".into(),
    }
}

fn show(d: &Drive) -> String {
    fields(&[
        ("name", d.name.clone()),
        ("id", d.id.to_string()),
        ("state", d.state.to_string()),
        (
            "size",
            format!("{} ({} bytes)", format_size(d.size_bytes), d.size_bytes),
        ),
        ("image", d.image_id.to_string()),
        ("vm", attachment(d)),
        ("created with vm", d.created_with_vm.to_string()),
        ("created", d.created_at.clone()),
    ])
}
