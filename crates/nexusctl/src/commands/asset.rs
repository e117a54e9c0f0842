//! `nexusctl asset <verb>`, and the tables the kernel and firecracker nouns share.

use nexus_lib::api::{Asset, AssetKind, AssetVerification};
use nexus_lib::client::{Client, ClientError};
use nexus_lib::size::format_size;

use crate::cli::AssetCommand;
use crate::output::{Printer, fields, table};

pub async fn run(client: &Client, out: Printer, cmd: AssetCommand) -> Result<u8, ClientError> {
    match cmd {
        AssetCommand::List(args) => list(client, out, &[args.kind]).await?,
        AssetCommand::Show(r) => {
            let asset = client.get_asset(&r.asset, None).await?;
            out.print(&asset, || show(&asset));
        }
        AssetCommand::Verify(r) => return verify(client, out, &[(r.asset, None)]).await,
        AssetCommand::Remove(r) => remove(client, out, &[(r.asset, None)]).await?,
    }
    Ok(0)
}

/// Lists the assets of each of `kinds` (`None`: all).
pub async fn list(
    client: &Client,
    out: Printer,
    kinds: &[Option<AssetKind>],
) -> Result<(), ClientError> {
    let mut assets = Vec::new();
    for kind in kinds {
        assets.extend(client.list_assets(*kind).await?);
    }
    out.print(&assets, || assets_table(&assets));
    Ok(())
}

pub fn assets_table(assets: &[Asset]) -> String {
    let rows: Vec<Vec<String>> = assets
        .iter()
        .map(|a| {
            vec![
                a.kind.to_string(),
                a.name.clone(),
                a.version.clone(),
                format_size(a.size_bytes),
                a.sha256[..12.min(a.sha256.len())].to_owned(),
                a.provider.clone(),
                a.id.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "KIND", "NAME", "VERSION", "SIZE", "SHA256", "PROVIDER", "ID",
        ],
        &rows,
    )
}

fn show(a: &Asset) -> String {
    fields(&[
        ("name", a.name.clone()),
        ("id", a.id.to_string()),
        ("kind", a.kind.to_string()),
        ("version", a.version.clone()),
        (
            "size",
            format!("{} ({} bytes)", format_size(a.size_bytes), a.size_bytes),
        ),
        ("sha256", a.sha256.clone()),
        ("path", a.path.clone()),
        ("provider", a.provider.clone()),
        ("created", a.created_at.clone()),
        (
            "inputs",
            serde_json::to_string_pretty(&a.inputs).unwrap_or_default(),
        ),
    ])
}

/// Verifies each `(asset, kind)`; exit code 1 when one does not match its record.
pub async fn verify(
    client: &Client,
    out: Printer,
    assets: &[(String, Option<AssetKind>)],
) -> Result<u8, ClientError> {
    let mut verdicts: Vec<AssetVerification> = Vec::new();
    for (asset, kind) in assets {
        verdicts.push(client.verify_asset(asset, *kind).await?);
    }
    out.print(&verdicts, || {
        verdicts
            .iter()
            .map(|v| {
                let verdict = if v.ok { "ok" } else { "FAILED" };
                format!(
                    "{} {}@{}: {verdict}: {}\n",
                    v.asset.kind, v.asset.name, v.asset.version, v.message
                )
            })
            .collect()
    });
    Ok(if verdicts.iter().all(|v| v.ok) { 0 } else { 1 })
}

/// Removes each `(asset, kind)`.
pub async fn remove(
    client: &Client,
    out: Printer,
    assets: &[(String, Option<AssetKind>)],
) -> Result<(), ClientError> {
    for (asset, kind) in assets {
        client.remove_asset(asset, *kind).await?;
    }
    let names: Vec<&str> = assets.iter().map(|(a, _)| a.as_str()).collect();
    out.print(&serde_json::json!({ "removed": names }), || {
        format!("removed {}", names.join(", "))
    });
    Ok(())
}
