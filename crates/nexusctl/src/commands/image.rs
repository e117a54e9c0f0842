//! `nexusctl image <verb>`.

use nexus_lib::api::{CreateImage, Image};
use nexus_lib::client::{Client, ClientError};
use nexus_lib::size::format_size;

use crate::cli::ImageCommand;
use crate::output::{Printer, fields, table};

pub async fn run(client: &Client, out: Printer, cmd: ImageCommand) -> Result<(), ClientError> {
    match cmd {
        ImageCommand::Import(args) => {
            // The daemon reads the path on its host: make it absolute here.
            let path = args
                .path
                .map(|p| std::path::absolute(&p).unwrap_or(p))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let image = client
                .import_image(&CreateImage {
                    path,
                    name: args.name,
                    asset: args.asset,
                    size: args.size,
                })
                .await?;
            out.print(&image, || show(&image));
        }
        ImageCommand::List => {
            let images = client.list_images().await?;
            out.print(&images, || {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.state.to_string(),
                            format_size(i.size_bytes),
                            i.source.clone(),
                            i.id.to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "STATE", "SIZE", "SOURCE", "ID"], &rows)
            });
        }
        ImageCommand::Show(r) => {
            let image = client.get_image(&r.image).await?;
            out.print(&image, || show(&image));
        }
        ImageCommand::Delete(r) => {
            client.delete_image(&r.image).await?;
            out.print(&serde_json::json!({"deleted": r.image}), || {
                format!("deleted {}", r.image)
            });
        }
    }
    Ok(())
}

pub fn show(i: &Image) -> String {
    fields(&[
        ("name", i.name.clone()),
        ("id", i.id.to_string()),
        ("state", i.state.to_string()),
        (
            "size",
            format!("{} ({} bytes)", format_size(i.size_bytes), i.size_bytes),
        ),
        ("sha256", i.sha256.clone()),
        ("source", i.source.clone()),
        ("created", i.created_at.clone()),
    ])
}
